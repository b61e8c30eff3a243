"""Tokens per character on held-out Chinese for byte-level BPE bases extended with Chinese merges.

    python benchmarks/bpe_merge_quality.py [--manifest corpora_manifests/shared_zh_vocab.yaml] [--sizes 5000,10000,20000] [--no-sentencepiece]

Training text: the manifest's training split; evaluation: its held-out slice (never trained on).
For each base (Llama-3 from ../shared/data; Qwen and Mistral Tekken fetched from pinned wheels),
tokens are learned once up to the largest size; the smaller sizes are its first merges (BPE
merges are learned in order, so that equals training with fewer). Compared at the same count:

- continued BPE (ours): tokens/char, held-out lines longer than with the base, non-Han lines
  changed (English Wikipedia + Alpaca-en + multilingual samples + Python source);
- AddedTokens: the base tokenizer plus ``add_tokens(the same new strings)`` (what LLaMA-Factory
  does): added tokens are matched before the pre-tokenizer, so they change how text around them
  splits; its tokens/char, longer lines and changed non-Han lines;
- the SentencePiece path on LLaMA-2 (``vocab train`` BPE on Han runs, cut to the same number of
  added pieces, merged with the default policy), tokens/char from sentencepiece.

Also the time to count and to learn (counting is linear in the bytes of text; learning depends
on the distinct segments, which grow slower than the text), and the 100 MB extrapolation.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from vocab.bbpe_base import load_bbpe_base  # noqa: E402
from vocab.bbpe_hf import build_tokenizer  # noqa: E402
from vocab.bbpe_train import TrainSettings, char_rule, learn_tokens  # noqa: E402
from vocab.bbpe_verify import SAMPLE_MULTILINGUAL, ids_of  # noqa: E402
from vocab.bbpe_merge import manifest_texts  # noqa: E402
from vocab.verify import python_source_lines  # noqa: E402

SHARED = Path(os.environ.get("ZHLLAMA_SHARED_DATA", REPO.parent / "shared" / "data"))


def bases() -> dict[str, Path]:
    out = {}
    if (SHARED / "tokenizers" / "llama3" / "tokenizer.model").is_file():
        out["Llama-3"] = SHARED / "tokenizers" / "llama3" / "tokenizer.model"
    try:
        from vocab.bbpe_sources import fetch_bpe_bases

        files = fetch_bpe_bases(log=lambda *_: None)
        out.setdefault("Llama-3", files["llama3_tokenizer.model"])  # the same bytes, from Meta's wheel
        out["Qwen"], out["Tekken"] = files["qwen.tiktoken"], files["tekken_240911.json"]
    except Exception as exc:  # no network and no cache: measure what is here
        print(f"(pinned bases skipped: {exc})")
    return out


def compare(base_tok, tok, zh: list[str], other: list[str]) -> dict:
    base_zh, new_zh = ids_of(base_tok, zh), ids_of(tok, zh)
    base_o, new_o = ids_of(base_tok, other), ids_of(tok, other)
    return {"tpc": sum(map(len, new_zh)) / sum(map(len, zh)),
            "longer": sum(len(b) > len(a) for a, b in zip(base_zh + base_o, new_zh + new_o)),
            "changed_non_han": sum(a != b for a, b in zip(base_o, new_o))}


def with_added_tokens(base, strings: list[str]):
    tok = build_tokenizer(base)
    tok.add_tokens(strings)
    return tok


def measure_base(name: str, path: Path, train: list[str], zh: list[str], other: list[str], sizes: list[int]) -> list:
    base = load_bbpe_base(path)
    started = time.time()
    new, stats = learn_tokens(base, train, TrainSettings(new_tokens=max(sizes)))
    seconds = time.time() - started
    mb = sum(len(t.encode("utf-8")) for t in train) / 1e6
    print(f"{name}: learned {stats['learned']} (kept {stats['kept']}, {stats['stopped']}) on {mb:.1f} MB: count "
          f"{stats['count_seconds']} s, learn {stats['learn_seconds']} s, all with reachability {seconds:.0f} s; "
          f"{stats['distinct_segments']} distinct segments. 100 MB: count ~{stats['count_seconds'] * 100 / mb:.0f} s "
          "(linear), learn >= the time above (grows with distinct segments)", flush=True)
    base_tok = build_tokenizer(base)
    rows = [(name, "base", 0, compare(base_tok, base_tok, zh, other))]
    for k in sizes:
        k = min(k, len(new))
        rows.append((name, "continued BPE", k, compare(base_tok, build_tokenizer(base, new[:k]), zh, other)))
        strings = [t.decode("utf-8") for t in new[:k]]
        rows.append((name, "AddedTokens", k, compare(base_tok, with_added_tokens(base, strings), zh, other)))
    return rows


def sentencepiece_rows(manifest_path: str, zh: list[str], sizes: list[int], work: Path) -> list:
    from vocab_quality import cut_to_budget  # the same cut as benchmarks/vocab_quality.py

    from vocab.merge import merge_tokenizers
    from vocab.stats import load_tokenizer, text_stats
    from vocab.train import TrainSettings as SpSettings, train

    base = SHARED / "tokenizers" / "llama2c" / "tokenizer.model"
    train(manifest_path, SpSettings(vocab_size=max(sizes) + 2500, num_threads=1), work / "sp", overwrite=True)
    base_tok = load_tokenizer(base)
    rows = [("LLaMA-2", "base (SentencePiece)", 0, {"tpc": text_stats(base_tok, zh)["tokens_per_char"]})]
    for k in sizes:
        try:
            cut = cut_to_budget(work / "sp" / "zh.model", k, work / f"sp_{k}.model")
        except SystemExit as exc:
            print(f"SentencePiece at {k}: {exc}")
            continue
        merged = merge_tokenizers(base, cut, work / f"sp_merged_{k}", overwrite=True, verify=False)
        stats = text_stats(load_tokenizer(work / f"sp_merged_{k}"), zh)
        rows.append(("LLaMA-2", "SentencePiece merge", merged["added"], {"tpc": stats["tokens_per_char"]}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(REPO / "corpora_manifests" / "shared_zh_vocab.yaml"))
    parser.add_argument("--sizes", default="5000,10000,20000")
    parser.add_argument("--no-sentencepiece", action="store_true", help="skip the LLaMA-2 SentencePiece rows")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    train = list(manifest_texts(args.manifest, split="train")[0])
    zh = [line for text in manifest_texts(args.manifest, split="holdout")[0] for line in text.split("\n") if line.strip()]
    ok = char_rule("han")
    en = (SHARED / "pretrain" / "wiki_demo_en.txt").read_text(encoding="utf-8").split("\n")
    other = [x for x in en + SAMPLE_MULTILINGUAL + python_source_lines() if x.strip() and not any(map(ok, x))]
    print(f"train: {len(train)} documents, {sum(map(len, train))} chars; held-out: {len(zh)} lines, "
          f"{sum(map(len, zh))} chars; non-Han lines: {len(other)}", flush=True)
    rows = []
    for name, path in bases().items():
        rows += measure_base(name, path, train, zh, other, sizes)
    if not args.no_sentencepiece:
        rows += sentencepiece_rows(args.manifest, zh, sizes, Path(tempfile.mkdtemp(prefix="bpe_mq.")))
    print(f"\n{'base':8} {'method':22} {'added':>6} {'tok/char':>8} {'longer lines':>12} {'non-Han changed':>15}")
    for name, method, k, r in rows:
        print(f"{name:8} {method:22} {k:>6} {r['tpc']:8.4f} {r.get('longer', ''):>12} {r.get('changed_non_han', ''):>15}")


if __name__ == "__main__":
    main()
