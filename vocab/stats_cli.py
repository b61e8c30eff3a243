"""Tokenization statistics of a (merged) tokenizer on text files, optionally against its base.

    python -m vocab stats --tokenizer runs/zh_vocab/merged --base ../shared/data/tokenizers/llama2c/tokenizer.model ../shared/data/pretrain/cmrc2018_dev_contexts.txt
    python -m vocab stats --tokenizer T [--base B] [--jieba] [--json] FILE...

T and B are SentencePiece .model files or Hugging Face folders holding tokenizer.model; or
byte-level BPE tokenizers (a folder with tokenizer.json, a tiktoken rank file, a tekken.json),
for which it prints JSON with tokens/char and the guarantees against B (vocab/bbpe_stats.py). Each FILE
is read as UTF-8 text, one text per line. Prints per file: tokens per character, tokens per CJK
character, byte-fallback share, share of the vocabulary used; with --base also the base's tokens
per character, non-CJK lines tokenized differently from B and unreachable added pieces; with
--jieba the share of tokens crossing a jieba word boundary. Definitions: vocab/stats.py.
"""
from __future__ import annotations

import argparse
import json

from .stats import load_tokenizer, read_lines, text_stats, tokenizer_stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model or HF folder with tokenizer.model")
    parser.add_argument("--base", help="base tokenizer to compare with (e.g. the LLaMA tokenizer.model)")
    parser.add_argument("--jieba", action="store_true", help="also measure tokens crossing jieba word boundaries")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("files", nargs="+", help="text files, one text per line")


def run(args: argparse.Namespace) -> int:
    from .bbpe_base import is_bbpe_base

    if is_bbpe_base(args.tokenizer):  # Llama-3 / Qwen / Tekken and their extensions: vocab/bbpe_stats.py
        from .bbpe_stats import bbpe_stats

        report = bbpe_stats(args.tokenizer, args.base, {path: read_lines(path) for path in args.files})
        print(json.dumps(report, ensure_ascii=False, indent=None if args.json else 2))
        return 0
    tok = load_tokenizer(args.tokenizer, "tokenizer")
    base = load_tokenizer(args.base, "base") if args.base else None
    lines = {path: read_lines(path) for path in args.files}  # read all first: a bad file fails early
    report = {"tokenizer": tokenizer_stats(tok, base),
              "files": {path: text_stats(tok, text, base, args.jieba) for path, text in lines.items()}}
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    t = report["tokenizer"]
    head = f"tokenizer {t['path']}: {t['vocab_size']} pieces ({t['model_type']})"
    if base is not None:
        head += (f"; vs base {t['base']} ({t['base_vocab_size']}): {t['added_pieces']} added, "
                 f"{t['unreachable_added']} unreachable")
    print(head)
    cols = ["file", "lines", "chars", "tok/char", "tok/cjk", "bytes", "vocab_used"]
    cols += ["base_tok/char", "non_cjk_changed"] if base is not None else []
    cols += ["jieba_cross"] if args.jieba else []
    rows = [cols]
    for path, s in report["files"].items():
        row = [path, s["lines"], s["characters"], _f(s["tokens_per_char"]), _f(s["tokens_per_cjk_char"]),
               _pct(s["byte_fallback_share"]), _pct(s["vocab_used_share"])]
        if base is not None:
            row += [_f(s["base_tokens_per_char"]), f"{s['non_cjk_lines_changed']}/{s['non_cjk_lines']}"]
        if args.jieba:
            row += [_pct(s["jieba_cross_share"])]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(cols))]
    for r in rows:
        print("  ".join(str(v).rjust(w) if j else str(v).ljust(w) for j, (v, w) in enumerate(zip(r, widths))))
    return 0


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"
