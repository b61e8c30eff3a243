"""Training throughput side by side: our engine (full / lora; ZeRO-3 / ZeRO-2) vs the HF Trainer +
DeepSpeed peer vs plain torch, on identical packed blocks. Prints tokens/s, MFU and peak memory.

    python benchmarks/gpu_throughput.py --work /tmp/gpu_bench            # one H200: the 1.4B model, ~5 min
    python benchmarks/gpu_throughput.py --work /tmp/gpu_bench --tiny     # CPU dry run of every row (~3 min)
    python benchmarks/gpu_throughput.py --work W --tokenizer TOK_DIR --manifest corpora_manifests/shared_zh_pretrain.yaml
    python benchmarks/gpu_throughput.py --work W --rows zero3 --levers   # + fetch=module / attention=sdpa rows

The model is built from a config (no download): by default a 1.4B LLaMA (24 layers x 2048, MLP 5504,
16 heads) with 49,472 embedding rows (LLaMA-2 + chinese_sp), random init, saved in bf16. The blocks
come from ``python -m pretrain prepare`` — on the given manifest and tokenizer, or on generated
Chinese/English documents (about 6 per 2,048-token block) with a tiny tokenizer whose ids use only
the first rows (speed does not depend on which ids occur). Every row runs in a fresh process:
``--warmup`` steps, then ``--steps`` timed ones.

MFU = tokens/s x (6 N + 12 L d S) / peak, N the parameters without the input embedding, peak the
chip's dense bf16 rate (``--peak-tflops``, default 989 = H100/H200 SXM).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENGINE_ROWS = {  # name -> overrides of the engine config
    "engine full zero3": ["mode=full", "deepspeed.preset=zero3"],
    "engine full zero2": ["mode=full", "deepspeed.preset=zero2"],
    "engine lora zero3": ["mode=lora", "deepspeed.preset=zero3"],
    "engine lora zero2": ["mode=lora", "deepspeed.preset=zero2"],
}
# Only with --levers (each costs a model load): the levers' own comparisons.
OPTIONAL_ENGINE_ROWS = {
    "engine full zero3 fetch=module": ["mode=full", "deepspeed.preset=zero3", "deepspeed.zero3_fetch=module"],
    "engine full zero3 attention=sdpa": ["mode=full", "deepspeed.preset=zero3", "model.attn_implementation=sdpa"],
    "engine lora zero3 fetch=module": ["mode=lora", "deepspeed.preset=zero3", "deepspeed.zero3_fetch=module"],
}
OTHER_ROWS = {"peer: HF Trainer + DeepSpeed zero3 (no doc mask)": "peer", "plain torch (sdpa causal)": "plain",
              "plain torch + Liger (causal)": "plain_liger",
              "plain torch + Liger, doc mask (flex_attention)": "plain_doc_flex_liger"}
SIZES = {  # hidden, layers, heads, mlp, vocab, seq, micro batch
    "1.4b": (2048, 24, 16, 5504, 49472, 2048, 8),
    "tiny": (64, 2, 4, 128, 4096, 128, 2),
}


def build_model(out: Path, size: str, tokenizer: Path, dtype: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    hidden, layers, heads, mlp, vocab, seq, _ = SIZES[size]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max(4096, seq),
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    for f in tokenizer.iterdir():  # rows >= tokens: the engine accepts padding rows beyond the tokenizer
        if f.is_file() and f.name != "merge_report.json":
            (out / f.name).write_bytes(f.read_bytes())
    return out


def synthetic_corpus(work: Path, documents: int) -> tuple[Path, Path]:
    """A manifest over generated documents and a tiny tokenizer trained on them."""
    from engine.tiny import DEFAULT_TEXT, make_tiny_tokenizer

    rng = random.Random(0)
    lines = sorted(set(DEFAULT_TEXT))
    docs = ["".join(rng.choice(lines) for _ in range(rng.randint(8, 16))) + f" #{i}" for i in range(documents)]
    text = work / "corpus.txt"
    text.write_text("\n".join(docs) + "\n", encoding="utf-8")
    from zhllama.files import sha256_file

    manifest = work / "corpus.yaml"
    manifest.write_text(
        "name: gpu_bench\nholdout: {fraction: 0.0}\nsources:\n"
        f"  - {{name: generated, path: {text}, format: txt, language: zh, license: generated, weight: 1.0, "
        f"sha256: {sha256_file(text)}}}\n", encoding="utf-8")
    return manifest, make_tiny_tokenizer(work / "tokenizer", docs[:2000], vocab_size=512)


def prepare(work: Path, manifest: Path, tokenizer: Path, seq: int) -> Path:
    out = work / f"shards-{seq}"
    if not (out / "prepare_report.json").is_file():
        subprocess.run([sys.executable, "-m", "pretrain", "prepare", "--manifest", str(manifest), "--tokenizer",
                        str(tokenizer), "--block-size", str(seq), "--out", str(out), "--no-progress"],
                       cwd=REPO, check=True)
    return out


def flops_per_token(model_dir: Path, seq: int) -> float:
    from zhllama.model_folder import list_tensors, read_model_config, weight_files

    config = read_model_config(model_dir)
    n = sum(t.numel for t in list_tensors(weight_files(model_dir)) if "embed_tokens" not in t.name)
    return 6 * n + 12 * config["num_hidden_layers"] * config["hidden_size"] * seq


def _env() -> dict:
    # keep a PYTHONPATH given to us (the GPU machine's carried wheels, benchmarks/gpu_device_run.sh)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run_row(cmd: list[str], spec: dict) -> subprocess.CompletedProcess:
    """One row in a fresh process; a row that hangs is stopped and reported, the others still run."""
    try:
        return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=spec["row_timeout"])
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return subprocess.CompletedProcess(cmd, 124, out[-1000:], f"\nrow stopped after {spec['row_timeout']} s")


def run_engine(name: str, overrides: list[str], spec: dict) -> dict:
    out = Path(spec["work"]) / ("run-" + name.replace(" ", "-"))
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(REPO / "pretrain" / "configs" / "tiny_cpu.yaml"),
           f"model.path={spec['model']}", f"data.dir={spec['data']}", f"output_dir={out}", "data.eval_split=null",
           f"model.dtype={spec['dtype']}", "model.attn_implementation=auto",
           f"batch.micro_batch_size={spec['micro_batch']}", "batch.gradient_accumulation_steps=1",
           f"schedule.max_steps={spec['warmup'] + spec['steps']}", "schedule.warmup_steps=0",
           "checkpoint.every_steps=0", "checkpoint.resume=never", "eval.every_steps=0", "eval.at_start=false",
           "logging.every_steps=1", "logging.wandb=disabled", "logging.tensorboard=false", "logging.plot=false",
           "logging.progress=false", "deepspeed.overrides={}", "lora.r=64", "lora.alpha=128", *overrides]
    proc = _run_row(cmd, spec)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/tokens_per_s" in r and r["step"] > spec["warmup"]]
    seconds = sum(spec["tokens_per_step"] / r["train/tokens_per_s"] for r in steps)
    kernels = next((line.split("] ", 1)[-1] for line in proc.stdout.splitlines() if "attention: " in line), "")
    return {"tokens_per_s": spec["tokens_per_step"] * len(steps) / seconds, "steps": len(steps),
            "peak_memory_gib": max((r.get("train/peak_memory_gib", 0) for r in steps), default=None) or None,
            "kernels": kernels}  # the engine's own line: Liger or why not, loss, attention (auto's choice)


def run_other(row: str, spec: dict) -> dict:
    proc = _run_row([sys.executable, str(REPO / "benchmarks" / "gpu_rows.py"), json.dumps({**spec, "row": row})], spec)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    return json.loads(lines[-1])


def table(results: dict[str, dict], flops: float, peak_tflops: float) -> str:
    peer = next((r.get("tokens_per_s") for name, r in results.items() if name.startswith("peer")), None)
    lines = [f"{'row':<52} {'tokens/s':>10} {'MFU':>6} {'vs peer':>8} {'peak GiB':>9}"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<52} failed: {r['error'].strip().splitlines()[-1][:80]}")
            continue
        tps = r["tokens_per_s"]
        mfu = tps * flops / (peak_tflops * 1e12)
        ratio = f"{tps / peer:.2f}x" if peer else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "-"
        lines.append(f"{name:<52} {tps:>10,.0f} {mfu:>6.1%} {ratio:>8} {mem:>9}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the model, shards and runs")
    ap.add_argument("--tiny", action="store_true", help="a tiny model in fp32: a CPU dry run of every row")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder for real shards (default: generated corpus)")
    ap.add_argument("--manifest", type=Path, help="corpus manifest for real shards (with --tokenizer)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row (default 20)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    ap.add_argument("--rows", nargs="*", help="only these rows (substring match)")
    ap.add_argument("--levers", action="store_true",
                    help="also the levers' comparison rows (ZeRO-3 fetch=module, attention=sdpa)")
    ap.add_argument("--row-timeout", type=int, default=300, help="seconds one row may take (default 300)")
    ap.add_argument("--results", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 TFLOP/s of the chip")
    args = ap.parse_args()
    import torch

    size = "tiny" if args.tiny else "1.4b"
    dtype = "float32" if args.tiny else "bfloat16"
    seq, micro = SIZES[size][5], SIZES[size][6]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.manifest and args.tokenizer:
        manifest, tokenizer = args.manifest.resolve(), args.tokenizer.resolve()
    else:
        manifest, tokenizer = synthetic_corpus(args.work, documents=400 if args.tiny else 6000)
    data = prepare(args.work, manifest, tokenizer, seq)
    model = build_model(args.work / f"model-{size}", size, tokenizer, dtype)
    print(f"[bench] model and shards ready in {time.perf_counter() - started:.0f} s", flush=True)
    spec = {"work": str(args.work), "model": str(model), "data": str(data), "dtype": dtype, "micro_batch": micro,
            "warmup": args.warmup, "steps": args.steps, "tokens_per_step": micro * seq, "cuda": torch.cuda.is_available(),
            "row_timeout": args.row_timeout}
    results: dict[str, dict] = {}
    for name, overrides in {**ENGINE_ROWS, **(OPTIONAL_ENGINE_ROWS if args.levers else {})}.items():
        if not args.rows or any(r in name for r in args.rows):
            results[name] = run_engine(name, overrides, spec)
            print(f"[bench] {name}: {results[name]}", flush=True)
    for name, row in OTHER_ROWS.items():
        if "liger" in row and not spec["cuda"]:  # Liger is Triton: CUDA only
            continue
        if not args.rows or any(r in name for r in args.rows):
            results[name] = run_other(row, spec)
            print(f"[bench] {name}: {results[name]}", flush=True)
    print(f"\n{size} LLaMA, micro batch {micro} x {seq} tokens, {dtype}, {args.steps} timed steps after "
          f"{args.warmup}; total {time.perf_counter() - started:.0f} s")
    print(table(results, flops_per_token(model, seq), args.peak_tflops))
    if args.results:
        args.results.write_text(json.dumps({"size": size, "micro_batch": micro, "seq": seq, "dtype": dtype,
                                            "rows": results}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
