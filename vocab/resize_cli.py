r"""Grow a model's embeddings to a merged tokenizer, starting new rows from base sub-token means.

    python -m vocab resize --model BASE_MODEL_DIR --tokenizer MERGED_DIR --out DIR \
        [--init subtoken-mean|spelling|mean|random] [--calibration-text ZH.txt EN.txt] [--device cpu|cuda] \
        [--pad-to-multiple-of 64] [--max-shard-size 5GB] [--seed 0] [--trust-remote-code]

DIR gets the weights (safetensors, sharded above --max-shard-size, stored dtype kept, old rows
bit-identical, tied embeddings still tied), config.json with the new vocab_size, the merged
tokenizer's files and resize_report.json (inputs' sha256, sizes, rows per initialisation rule).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .resize_rows import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="base model folder (config.json + safetensors)")
    parser.add_argument("--tokenizer", required=True, type=Path, help="merged tokenizer folder (python -m vocab merge)")
    parser.add_argument("--out", required=True, type=Path, help="output model folder (must not exist)")
    parser.add_argument("--init", default="subtoken-mean", choices=METHODS,
                        help="new rows: mean of the base sub-token rows (default); spelling: input rows the "
                             "same, output rows give each piece the base model's probability of its spelling "
                             "(runs the base model once, untied models only); mean of all rows; or the "
                             "model's own initializer normal(0, initializer_range)")
    parser.add_argument("--calibration-text", type=Path, nargs="+", default=None, metavar="FILE",
                        help="for --init spelling: UTF-8 text files, one paragraph per line, a few thousand tokens "
                             "each: the new language first, then every language the model must keep reading")
    parser.add_argument("--device", default="cpu", help="where --init spelling runs the base model (cpu, cuda)")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N",
                        help="round the row count up to a multiple of N (e.g. 64 for tensor cores)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest weight file (default 5GB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --init random")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model folder's own Python code define the architecture")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .resize import ResizeConfig, resize_model

    cfg = ResizeConfig(
        model=args.model, tokenizer=args.tokenizer, out=args.out, init=args.init,
        pad_to_multiple_of=args.pad_to_multiple_of, max_shard_size=args.max_shard_size,
        seed=args.seed, trust_remote_code=args.trust_remote_code, device=args.device,
        calibration_text=args.calibration_text,
    )
    report = resize_model(cfg, progress=tqdm)
    summary = {k: report[k] for k in ("old_vocab_size", "new_vocab_size", "init", "rows_per_rule",
                                      "dtype", "tied_embeddings", "weight_files")}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")
    return 0
