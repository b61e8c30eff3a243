"""Merge a Chinese SentencePiece model into a LLaMA-family tokenizer (never imports torch).

    python -m vocab merge --base ../shared/data/tokenizers/llama2c/tokenizer.model --add ../shared/data/tokenizers/chinese_llama_alpaca/chinese_sp.model --out runs/zh_tokenizer

BASE is a SentencePiece tokenizer.model or a Hugging Face folder holding one (its special tokens
and chat template are kept). ADD is a SentencePiece model (BPE or Unigram) trained on Chinese.
OUT becomes an HF tokenizer folder (tokenizer.model, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, merge_report.json); pieces 0..N-1 stay the base's.

The default policy (han) appends only Han-character pieces with scores below every base score, so
English and code tokenize exactly as before, and repairs Unigram pieces that BPE could not reach.
--policy chinese-llama-alpaca reproduces the original score-0 merge (49,953 pieces for LLaMA) and
fails --verify, which is why it needs --no-verify.
"""
from __future__ import annotations

import argparse
import json
import sys

from .merge_policy import DEFAULT_POLICY, POLICIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="base tokenizer.model, or an HF folder holding one")
    parser.add_argument("--add", required=True, help="Chinese SentencePiece .model to merge in")
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                        help=f"which pieces to append and how to score them (default {DEFAULT_POLICY})")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="M",
                        help="append <reserved_K> CONTROL pieces until the vocab size is a multiple of M")
    parser.add_argument("--add-pad-token", action="store_true",
                        help="append <pad> right after the merged pieces (Chinese-Alpaca: id 49953)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="check the five invariants on built-in samples; a failure is an error (default on)")


def run(args: argparse.Namespace) -> int:
    from .merge import merge_tokenizers

    report = merge_tokenizers(args.base, args.add, args.out, policy=args.policy,
                              pad_to_multiple_of=args.pad_to_multiple_of, add_pad_token=args.add_pad_token,
                              overwrite=args.overwrite, verify=args.verify)
    summary = {k: report[k] for k in ("base_vocab_size", "added", "skipped_duplicate", "skipped_by_policy",
                                      "vocab_size")}
    summary["unreachable"] = {k: report["unreachable"][k] for k in ("found", "made_reachable", "dropped")}
    summary["checks"] = {name: c.get("ok") for name, c in report["checks"].items()} if args.verify else "skipped"
    print(json.dumps(summary, ensure_ascii=False))
    print(f"wrote {args.out} (details in {args.out}/merge_report.json)")
    if report["added"] == 0:  # e.g. the base merged into itself: a "merged" tokenizer that is the base
        print(f"warning: no piece of {args.add} was added ({report['skipped_duplicate']} already in the base, "
              f"{report['skipped_by_policy']} left out by --policy {args.policy}): {args.out} is the base "
              "vocabulary; was --add the Chinese model?", file=sys.stderr)
    return 0
