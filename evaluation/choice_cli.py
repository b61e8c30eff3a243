"""Multiple-choice benchmarks (C-Eval, CMMLU, MMLU) by letter logits on any Hugging Face model folder.

    python -m evaluation choice --model DIR --benchmark ceval --data data/ceval --split val --shots 5 \
        --out runs/ceval.json [--device cuda] [--dtype bfloat16] [--batch-size 8] [--max-items-per-subject N]
    python -m evaluation choice --model DIR --benchmark mmlu --data hub --split test --out runs/mmlu.json
    python -m evaluation choice ... --contamination runs/contamination.keys.json   # clean items apart

Writes the results JSON (settings, data files' sha256, accuracy overall / per category / per
subject, every item's choice and letter log-probabilities) and prints a table. With
``--contamination`` (a report of ``python -m evaluation contamination``) the accuracy on clean,
partially and fully contaminated items is reported apart. The data are checked before the model
loads; on bad data nothing is written.
"""
from __future__ import annotations

import argparse
import time

from zhllama.errors import UserError
from zhllama.model_folder import require_model_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder (weights + tokenizer)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--benchmark", required=True, choices=["ceval", "cmmlu", "mmlu"])
    parser.add_argument("--data", required=True, help="folder in the official layout, or 'hub' to download")
    parser.add_argument("--split", default=None, help="scored split (default: val for ceval/mmlu, test for cmmlu)")
    parser.add_argument("--shots", type=int, default=0, help="few-shot exemplars from dev (0 = zero-shot)")
    parser.add_argument("--max-items-per-subject", type=int, default=None)
    parser.add_argument("--subjects", nargs="*", default=None, help="only these subjects")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=None, help="prompt tokens kept (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--contamination", default=None, metavar="REPORT",
                        help="a contamination report (OUT.json of `python -m evaluation contamination`): "
                             "accuracy on clean and contaminated items apart")
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from .benchmarks import load_benchmark

    split = args.split or ("test" if args.benchmark == "cmmlu" else "val")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    model_dir = require_model_folder(args.model, "--model")
    bench = load_benchmark(args.benchmark, args.data, split, args.shots, args.max_items_per_subject, args.subjects)
    statuses = None
    if args.contamination:
        from .contamination_cli import item_statuses

        statuses = item_statuses(args.contamination, bench.name, split)
    summary, preds, seconds = _score(args, bench)
    if statuses is not None:
        from .results import by_contamination

        summary["contamination"] = by_contamination(preds, statuses)
    from zhllama.files import sha256_file, write_json_atomic

    from .results import table

    report = {
        "benchmark": bench.name, "split": split, "shots": args.shots, "model": str(model_dir),
        "data": str(args.data), "data_sha256": {f: sha256_file(f) for f in bench.files},
        "max_items_per_subject": args.max_items_per_subject, "dtype": args.dtype, "seconds": round(seconds, 2),
        "contamination_report": args.contamination,
        **summary, "predictions": preds,
    }
    write_json_atomic(args.out, report)
    print(table(summary))
    print(f"{bench.name} {split} {args.shots}-shot: accuracy {summary['accuracy']:.4f} on {summary['items']} items "
          f"-> {args.out}")
    return 0


def _score(args: argparse.Namespace, bench):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .choice import evaluate_benchmark

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    max_length = args.max_length or getattr(model.config, "max_position_embeddings", None)
    start = time.perf_counter()
    summary, preds = evaluate_benchmark(model, tokenizer, bench, batch_size=args.batch_size, device=args.device,
                                        max_length=max_length, progress=not args.no_progress)
    return summary, preds, time.perf_counter() - start
