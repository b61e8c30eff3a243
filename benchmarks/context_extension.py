"""Does a context extension work? A small LLaMA trained on short blocks, extended two ways, scored by position.

    python benchmarks/context_extension.py [--work DIR] [--short 128] [--factor 4] [--base-steps 600] \
        [--extend-steps 150] [--rope-theta 100000]

1. Trains a SentencePiece tokenizer (vocab 2000) and a small LLaMA (hidden 128, 4 layers,
   max_position_embeddings = --short) with `python -m pretrain train` on blocks of --short tokens of
   the English Wikipedia articles in ../shared/data (long documents: 30 articles of ~34K characters;
   a fifth of them held out).
2. Continues it --extend-steps on blocks of short x factor tokens, three times, from the same model:
   position interpolation (`model.rope_scaling={rope_type: linear, factor: F}`, as Chinese-LLaMA-
   Alpaca-2's 16K models), a larger base frequency (`model.rope_scaling={rope_theta: --rope-theta}`,
   adjusted base frequency as Code Llama) and, as the control, the same training without scaling
   (`model.max_position_embeddings=short x F`: positions the model never saw, extrapolated).
3. Scores the held-out articles with `python -m evaluation long-context --whole-documents`: the base
   model as it is and read with the scaling but untrained, and the two extended models. Prints the
   loss (nats/token) per stretch of positions; * marks positions past the ones a model covers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WIKI = REPO.parent / "shared" / "data" / "pretrain" / "wiki_demo_en.txt"


def _run(*argv: str, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1), "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore::FutureWarning"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    with open(log, "w", encoding="utf-8") as fh:
        done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(argv)}\n  see {log}")


def small_llama(out: Path, texts: list[str], vocab_size: int, positions: int) -> Path:
    """A SentencePiece tokenizer (``vocab_size``) trained on ``texts`` and a random LLaMA (hidden 128, 4 layers,
    seed 0) in ``out``; an ``out`` that holds one already is kept."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.tiny import make_tiny_tokenizer

    if (out / "config.json").is_file():
        return out
    make_tiny_tokenizer(out, texts=texts, vocab_size=vocab_size)
    tok = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=positions,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _model(work: Path, short: int) -> Path:
    """The tokenizer (trained on sentences of the training articles) and a random model covering ``short``."""
    if (work / "init" / "config.json").is_file():
        return work / "init"
    sentences = [s for line in WIKI.read_text(encoding="utf-8").splitlines() for s in re.split(r"(?<=\.) ", line)]
    return small_llama(work / "init", [s for s in sentences if 20 < len(s) < 2000], 2000, short)


def _manifest(work: Path) -> Path:
    from zhllama.files import sha256_file

    path = work / "wiki_en.yaml"
    path.write_text(json.dumps({
        "name": "wiki_en_long", "holdout": {"fraction": 0.2, "salt": "context-extension"},
        "sources": [{"name": "wiki_en", "path": str(WIKI), "format": "txt", "language": "en",
                     "license": "CC BY-SA", "sha256": sha256_file(WIKI), "weight": 1.0}]}), encoding="utf-8")
    return path


def _train(work: Path, name: str, model: Path, shards: Path, steps: int, lr: float, micro: int,
           *extra: str) -> Path:
    out = work / name
    if not (out / "final" / "config.json").is_file():
        _run("-m", "pretrain", "train", "--config", "pretrain/configs/tiny_cpu.yaml", f"model.path={model}",
             f"data.dir={shards}", f"output_dir={out}", f"schedule.max_steps={steps}",
             f"schedule.warmup_steps={max(1, steps // 20)}", f"optim.lr={lr}", f"batch.micro_batch_size={micro}",
             "batch.gradient_accumulation_steps=1", "checkpoint.every_steps=0", "eval.every_steps=0",
             "eval.at_start=false", "logging.every_steps=10", "logging.tensorboard=false", "logging.plot=false", "logging.progress=false",
             "deepspeed.overrides={}", *extra, log=work / f"{name}.log")
    return out / "final"


def _score(work: Path, name: str, model: Path, manifest: Path, lengths: list[int], *extra: str) -> dict:
    out = work / f"score_{name}.json"
    _run("-m", "evaluation", "long-context", "--model", str(model), "--lengths", ",".join(map(str, lengths)),
         "--set", f"wiki_en={manifest}", "--whole-documents", "--windows", "8", "--passkey-lengths", "none",
         "--no-progress", "--out", str(out), *extra, log=work / f"score_{name}.log")
    return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/context_extension"))
    p.add_argument("--short", type=int, default=128, help="the base model's positions and training blocks")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--extend-steps", type=int, default=150)
    p.add_argument("--rope-theta", type=float, default=100000.0, help="the larger base (the model's: 10,000)")
    args = p.parse_args()
    if not WIKI.is_file():
        sys.exit(f"{WIKI} is absent (../shared/data ships beside the repo on dev machines)")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    long = args.short * args.factor
    init, manifest = _model(work, args.short), _manifest(work)
    for size in (args.short, long):
        if not (work / f"shards_{size}" / "prepare_report.json").is_file():
            _run("-m", "pretrain", "prepare", "--manifest", str(manifest), "--tokenizer", str(init), "--block-size",
                 str(size), "--out", str(work / f"shards_{size}"), "--no-progress", log=work / f"prepare_{size}.log")
    base = _train(work, "base", init, work / f"shards_{args.short}", args.base_steps, 3e-3, 8)
    micro = max(1, 8 // args.factor)  # the same tokens per step as the base training
    scaling = f"{{rope_type: linear, factor: {args.factor}}}"
    interpolated = _train(work, "interpolated", base, work / f"shards_{long}", args.extend_steps, 1e-3, micro,
                          f"model.rope_scaling={scaling}")
    extrapolated = _train(work, "extrapolated", base, work / f"shards_{long}", args.extend_steps, 1e-3, micro,
                          f"model.max_position_embeddings={long}")
    based = _train(work, f"base_{args.rope_theta:g}", base, work / f"shards_{long}", args.extend_steps, 1e-3, micro,
                   f"model.rope_scaling={{rope_theta: {args.rope_theta:g}}}", f"model.max_position_embeddings={long}")
    lengths = [args.short // 2, args.short, args.short * 2, long, long * 2]
    rows = {"base": _score(work, "base", base, manifest, lengths),
            f"base read with linear x{args.factor}, untrained": _score(work, "base_x", base, manifest, lengths,
                                                                        "--rope-scaling", scaling),
            f"+{args.extend_steps} steps, linear x{args.factor} (PI)": _score(work, "pi", interpolated, manifest, lengths),
            f"+{args.extend_steps} steps, base {args.rope_theta:,.0f} (ABF)": _score(work, "abf", based, manifest,
                                                                                     lengths),
            f"+{args.extend_steps} steps, no scaling": _score(work, "ext", extrapolated, manifest, lengths)}
    stretches = next(iter(rows.values()))["loss"]["wiki_en"]["by_position"]
    heads = [f"{s['tokens'][0]}-{s['tokens'][1]}" for s in stretches]
    width = max(map(len, rows))
    windows = next(iter(rows.values()))["loss"]["wiki_en"]["windows"]
    print(f"held-out English articles, {windows} windows of {lengths[-1]} tokens; loss (nats/token) by position; "
          "* = past the model's positions")
    print(f"{'model':<{width}}  " + "".join(f"{h:>12}" for h in heads))
    for label, result in rows.items():
        cells = [f"{s['loss']:.3f}{'*' if s['beyond_positions'] else ' '}"
                 for s in result["loss"]["wiki_en"]["by_position"]]
        print(f"{label:<{width}}  " + "".join(f"{c:>12}" for c in cells))
    print(f"(work: {work})")


if __name__ == "__main__":
    main()
