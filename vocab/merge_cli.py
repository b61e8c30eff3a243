"""Merge a Chinese SentencePiece model into a LLaMA-family tokenizer (never imports torch).

    python -m vocab merge --base ../shared/data/tokenizers/llama2c/tokenizer.model --add ../shared/data/tokenizers/chinese_llama_alpaca/chinese_sp.model --out runs/zh_tokenizer

BASE is a SentencePiece tokenizer.model or a Hugging Face folder holding one (its special tokens
and chat template are kept).

A byte-level BPE BASE (Llama-3/Qwen tiktoken rank file, Mistral tekken.json, an HF tokenizer.json
or folder whose model is BPE with a ByteLevel pre-tokenizer) learns its new tokens from text
instead of an ADD model: continued BPE under the base's own pre-tokenizer, Han-only merges
appended after every base merge (vocab/bbpe_merge.py):

    python -m vocab merge --base ../shared/data/tokenizers/llama3/tokenizer.model --manifest corpora_manifests/shared_zh_vocab.yaml --new-tokens 20000 --out runs/llama3_zh
 ADD is a SentencePiece model (BPE or Unigram) trained on Chinese.
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
    parser.add_argument("--add", help="Chinese SentencePiece .model to merge in (SentencePiece bases)")
    bpe = parser.add_argument_group("byte-level BPE bases (Llama-3, Qwen, Mistral Tekken)")
    bpe.add_argument("--manifest", help="corpus manifest whose training split the new merges are learned on")
    bpe.add_argument("--new-tokens", type=int, help="how many tokens to learn (fewer if pairs run out)")
    bpe.add_argument("--allowed", choices=["han", "han+punct"], default="han",
                     help="what a new token may decode to (han+punct: also full-width CJK punctuation)")
    bpe.add_argument("--jieba", action="store_true", help="no new token crosses a jieba word boundary")
    bpe.add_argument("--min-count", type=int, default=2, help="stop when no pair occurs this often")
    bpe.add_argument("--pattern", help="split regex of a tiktoken rank file we do not know (see vocab/bbpe_profiles.py)")
    bpe.add_argument("--seed", type=int, default=0, help="seeds the manifest's weighted mix")
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                        help=f"which pieces to append and how to score them (default {DEFAULT_POLICY})")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="M",
                        help="append <reserved_K> CONTROL pieces until the vocab size is a multiple of M")
    parser.add_argument("--add-pad-token", action="store_true",
                        help="append <pad> right after the merged pieces (Chinese-Alpaca: id 49953)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="check the invariants (five for SentencePiece bases, six for byte-level BPE) on built-in "
                        "samples; a failure is an error and writes nothing (default on)")


def run(args: argparse.Namespace) -> int:
    from zhllama.errors import UserError

    from .bbpe_base import is_bbpe_base

    if is_bbpe_base(args.base):
        from .bbpe_merge import run_from_manifest

        if args.add:
            raise UserError(f"--base {args.base} is a byte-level BPE tokenizer: its new tokens are learned from "
                            "text (--manifest M --new-tokens N), not taken from an --add model")
        if not args.manifest or not args.new_tokens:
            raise UserError(f"--base {args.base} is a byte-level BPE tokenizer: give --manifest and --new-tokens")
        return run_from_manifest(args.base, args.manifest, args.out, args.new_tokens, allowed=args.allowed,
                                 jieba=args.jieba, min_count=args.min_count, pattern=args.pattern, seed=args.seed,
                                 overwrite=args.overwrite, verify=args.verify)
    if not args.add:
        raise UserError(f"--base {args.base} is a SentencePiece model: give --add (a Chinese SentencePiece model)")
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
