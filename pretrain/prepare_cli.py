"""Tokenize a corpus manifest once into content-keyed token shards, packed by document.

    python -m pretrain prepare --manifest M.yaml --tokenizer DIR --block-size N --out DIR [--shard i/n] [--num-proc K]

Streams the manifest's sources (cleaning applied, sampling weights deciding each source's share),
tokenizes in batches on K processes, appends EOS to every document (and starts it with BOS) and
writes fixed-size token files with the document boundaries plus prepare_report.json (cache key,
documents, tokens, characters, time). The validation split is the manifest's holdout slice.

Re-running with identical inputs and settings does nothing and says so. --shard i/n prepares the
i-th of n disjoint parts into OUT/part-i-of-n (one job per machine); the training loader reads all
parts as one dataset (engine.packed.PackedDataset).
"""
from __future__ import annotations

import argparse
import os

from .prepare import PrepareConfig, parse_shard, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="corpus manifest YAML (corpora/manifest.py format)")
    parser.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer folder (with tokenizer.json)")
    parser.add_argument("--block-size", type=int, required=True, help="tokens per training block")
    parser.add_argument("--out", required=True, help="output folder (parts go to OUT/part-i-of-n)")
    parser.add_argument("--shard", default="0/1",
                        help="prepare the i-th of n disjoint parts, as i/n (default 0/1); 'slurm' takes i and n "
                             "from a Slurm job array")
    parser.add_argument("--num-proc", type=int, default=min(8, os.cpu_count() or 1),
                        help="tokenizer processes; does not change the output (default: cores, at most 8)")
    parser.add_argument("--seed", type=int, default=0, help="decides fractional sampling weights (default 0)")
    parser.add_argument("--on-decode-error", choices=["fail", "skip"], default=None,
                        help="lines that are not UTF-8: fail naming file and line, or skip and count them "
                             "(default: the manifest's on_decode_error, else fail)")
    parser.add_argument("--file-tokens", type=int, default=1 << 28, help="tokens per token file (default 2**28)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace data in --out prepared from other inputs or settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = PrepareConfig(manifest=args.manifest, tokenizer=args.tokenizer, block_size=args.block_size, out=args.out,
                        shard=parse_shard(args.shard), num_proc=args.num_proc, seed=args.seed,
                        on_decode_error=args.on_decode_error, file_tokens=args.file_tokens,
                        overwrite=args.overwrite, progress=not args.no_progress)
    result = prepare(cfg)
    report = result.report
    key = report["cache_key"][:16]
    if result.status == "up-to-date":
        print(f"up to date: {result.part_dir} already holds this data (cache key {key}…, same inputs and "
              "settings); nothing to do")
        return 0
    train, val = report["splits"]["train"], report["splits"]["validation"]
    t = report["time"]
    print(f"prepared {result.part_dir}: {report['documents']:,} documents (train {train['documents']:,}, "
          f"validation {val['documents']:,}), {report['tokens']:,} tokens, {report['characters']:,} characters, "
          f"{train['blocks']:,} + {val['blocks']:,} blocks of {report['block_size']} in {t['seconds']:.1f} s "
          f"({t['tokens_per_second']:,} tokens/s); cache key {key}…")
    for name, st in report["source_stats"].items():
        tr = st["train"]
        dropped = {k: tr[k] for k in ("empty", "undecodable", "duplicates", "too_short") if tr[k]}
        if dropped:
            print(f"  {name}: dropped " + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in dropped.items()))
        if "long_documents" in st:
            print(f"  {name}: {long_documents_line(st['long_documents'], tr['characters'])}")
    if report["manifest"]["holdout"]["fraction"] <= 0:
        print(f"warning: manifest {args.manifest} has no holdout, so the validation split is empty; "
              "add `holdout: {fraction: 0.01}` to evaluate on held-out documents")
    elif val["documents"] == 0:
        print("warning: the validation split of this part is empty (the holdout fraction is small for this corpus)")
    if report["documents"] == 0:
        print(f"warning: part {cfg.shard[0]}/{cfg.shard[1]} has no documents (more parts than documents?)")
    return 0


def long_documents_line(long: dict, characters: int) -> str:
    """What length upsampling did to one source: long documents' share of its text, read and in the mix."""
    read = long["characters"] / max(characters, 1)
    mixed = long["mix_long_characters"] / max(long["mix_characters"], 1)
    return (f"{long['documents']:,} long documents (>= {long['min_chars']:,} characters, weight {long['weight']:g}): "
            f"{read:.1%} of its characters read, {mixed:.1%} of its training mix")
