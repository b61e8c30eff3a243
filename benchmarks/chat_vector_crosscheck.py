"""`sft chat-vector` beside mergekit's task arithmetic on the same three models: equal weights, time, memory.

    python benchmarks/chat_vector_crosscheck.py [--work DIR] [--hidden 1024] [--layers 8]

Task arithmetic over a base with models {chat: weight 1, target: weight 1} is base + (chat - base) +
(target - base) = target + (chat - base): the chat vector. Three random LLaMA models of one shape (bf16;
default about 170 M parameters: vocab 32,000, hidden 1,024, 8 layers), chat and target the base plus
noise, are merged by both tools; each runs as its own process, its wall time and peak resident memory
measured. Every output tensor is compared (mergekit computes in float32 and stores bfloat16, as ours).
mergekit 0.1.5 (pinned) is installed with its two small extra dependencies into WORK/mergekit_site;
torch, transformers and the rest are this environment's. An extended vocabulary is ours alone (mergekit
needs a tokenizer_source to merge models of other vocabulary sizes), so the models share one here.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from side_packages import pinned_site  # noqa: E402
PINS = ("mergekit==0.1.5", "immutables==0.21", "click==8.5.1")
PEAK = ("import resource, runpy, sys; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
        "finally:\n    print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")


def _models(work: Path, hidden: int, layers: int) -> dict[str, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.tiny import make_tiny_tokenizer

    out = {name: work / name for name in ("base", "chat", "target")}
    if all((p / "config.json").is_file() for p in out.values()):
        return out
    tokenizer = make_tiny_tokenizer(work / "tokenizer")
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for seed, (name, folder) in enumerate(out.items()):
        generator = torch.Generator().manual_seed(seed)  # chat and target: the base plus their own noise
        noise = 0.0 if name == "base" else 0.01
        model.load_state_dict({k: v + (torch.randn(v.shape, generator=generator) * noise).to(v.dtype)
                               for k, v in base.items()})
        model.save_pretrained(folder, max_shard_size="200MB")
        for f in tokenizer.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
    return out


def _timed(argv: list[str], env: dict, log: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        done = subprocess.run([sys.executable, "-c", PEAK, *argv], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    text = log.read_text(encoding="utf-8")
    if done.returncode:
        sys.exit(f"failed: {' '.join(argv)}; see {log}")
    peak = int(text.rsplit("peak_rss_kb", 1)[1].split()[0])
    return seconds, peak


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def main() -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/chat_vector_crosscheck"))
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    site = pinned_site(work / "mergekit_site", PINS, no_deps=True)
    models = _models(work, args.hidden, args.layers)
    config = work / "task_arithmetic.yml"
    config.write_text(json.dumps({
        "merge_method": "task_arithmetic", "base_model": str(models["base"]), "dtype": "float32",
        "out_dtype": "bfloat16", "parameters": {"normalize": False},
        "models": [{"model": str(models["chat"]), "parameters": {"weight": 1.0}},
                   {"model": str(models["target"]), "parameters": {"weight": 1.0}}]}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    rows = {}
    for out in (work / "ours", work / "mergekit"):
        shutil.rmtree(out, ignore_errors=True)
    rows["zhllama sft chat-vector"] = _timed(
        ["sft", "chat-vector", "--target", str(models["target"]), "--base", str(models["base"]), "--chat",
         str(models["chat"]), "--out", str(work / "ours"), "--max-shard-size", "200MB", "--no-progress"],
        env, work / "ours.log")
    rows["mergekit 0.1.5 task_arithmetic"] = _timed(
        ["mergekit.scripts.run_yaml", str(config), str(work / "mergekit"), "--copy-tokenizer"],
        {**env, "PYTHONPATH": f"{REPO}:{site}"}, work / "mergekit.log")
    ours, theirs = _weights(work / "ours"), _weights(work / "mergekit")
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))[:5]
    elements = sum(t.numel() for t in ours.values())
    equal = sum(int((ours[n] == theirs[n]).sum()) for n in ours)
    worst = max(float((ours[n].float() - theirs[n].float()).abs().max()) for n in ours)
    print(f"{len(ours)} tensors, {elements:,} parameters (bf16); outputs: {equal / elements:.4%} of elements "
          f"identical, largest difference {worst:.3g}\n")
    print("| tool | seconds | peak memory (GB) |\n|---|---:|---:|")
    for name, (seconds, peak) in rows.items():
        print(f"| {name} | {seconds:.1f} | {peak / 1e6:.2f} |")


if __name__ == "__main__":
    main()
