"""What a Chinese vocabulary saves on reading comprehension: CMRC 2018 dev prompt sizes per tokenizer.

    python benchmarks/reading_prompt_tokens.py [--shots 0 3]

The prompts ``python -m evaluation reading`` builds (same exemplars for every tokenizer), counted
with LLaMA-2's tokenizer and with Chinese-LLaMA-2's (LLaMA-2's plus 23,296 Chinese
pieces, ``../shared/data``). Printed per tokenizer and shot count: mean, median and largest prompt,
and how many of the 3,219 questions do not fit 1,024 / 2,048 positions with 64 left for the answer.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def tokenizers() -> dict:
    from transformers import AutoTokenizer, LlamaTokenizer

    def sentencepiece(path: Path):
        return LlamaTokenizer(**LlamaTokenizer.convert_to_native_format(vocab_file=str(path)))

    return {"LLaMA-2 (32,000)": sentencepiece(DATA / "tokenizers/llama2c/tokenizer.model"),
            "Chinese-LLaMA-2 (55,296)": AutoTokenizer.from_pretrained(DATA / "tokenizers/chinese_llama_alpaca_2")}


def main() -> None:
    from evaluation.reading import build_prompts, exemplar_pool
    from evaluation.reading_data import read_reading_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 3])
    args = parser.parse_args()
    cmrc = read_reading_set(DATA / "pretrain/cmrc2018_dev.json")
    pool = exemplar_pool(cmrc)
    print(f"CMRC 2018 dev, {len(cmrc.questions)} questions: prompt tokens\n")
    print("| tokenizer | shots | mean | median | largest | over 1,024 - 64 | over 2,048 - 64 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, tokenizer in tokenizers().items():
        for shots in args.shots:
            sizes = [len(p.ids) for p in build_prompts(tokenizer, cmrc, pool, True, shots, 0, 10**9, False)]
            print(f"| {name} | {shots} | {statistics.mean(sizes):,.0f} | {statistics.median(sizes):,.0f} | "
                  f"{max(sizes):,} | {sum(n > 960 for n in sizes):,} | {sum(n > 1984 for n in sizes):,} |")


if __name__ == "__main__":
    main()
