"""Lines where transformers' ids differ from sentencepiece's: our folder vs the Llama class.

    python benchmarks/tokenizer_parity.py [--data ../shared/data]

Merges llama2c + chinese_sp.model (`vocab merge`), then tokenizes 300 indented Python lines of this
repo, 300 lines of cmrc2018 news and 54 lines with leading/multiple spaces and tabs with
AutoTokenizer on (a) the folder as written (generic class, sentencepiece's normalisation in
tokenizer.json) and (b) the same folder naming transformers 5's LlamaTokenizer (what we wrote
before), and with Chinese-LLaMA-Alpaca-2's published folder on 500 news lines. Special-token text
is kept as text (split_special_tokens=True) so only whitespace handling and merges differ.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
from transformers import AutoTokenizer

from vocab.merge import merge_tokenizers
from vocab.verify import text_lines

REPO = Path(__file__).resolve().parents[1]


def _differ(folder: Path, lines: list[str]) -> int:
    tok = AutoTokenizer.from_pretrained(str(folder))
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    got = tok(lines, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return sum(a != b for a, b in zip(got, sp.encode(lines)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    toks = args.data / "tokenizers"
    code = [line for p in sorted(REPO.glob("*/*.py")) for line in p.read_text(encoding="utf-8").split("\n")
            if line.startswith(" ")][:300]
    news = text_lines([args.data / "pretrain" / "cmrc2018_dev_contexts.txt"])
    spaces = [" " + line for line in news[:50]] + ["a  b   c", "\tTab", "  两个空格", "x\ny"]
    with tempfile.TemporaryDirectory() as tmp:
        ours = Path(tmp) / "ours"
        merge_tokenizers(toks / "llama2c" / "tokenizer.model", toks / "chinese_llama_alpaca" / "chinese_sp.model",
                         ours, verify=False)
        llama_class = Path(tmp) / "llama_class"
        shutil.copytree(ours, llama_class)
        config = json.loads((llama_class / "tokenizer_config.json").read_text())
        config.update(tokenizer_class="LlamaTokenizer", legacy=False)
        (llama_class / "tokenizer_config.json").write_text(json.dumps(config))
        for name, folder in (("ours (PreTrainedTokenizerFast)", ours), ("LlamaTokenizer class", llama_class)):
            for label, lines in (("indented Python", code), ("cmrc news", news[:300]),
                                 ("leading/multiple spaces, tabs", spaces)):
                print(f"{name:32s} {label:30s} {_differ(folder, lines):4d} / {len(lines)} lines differ")
    published = toks / "chinese_llama_alpaca_2"
    print(f"{'Chinese-LLaMA-Alpaca-2 published':32s} {'cmrc news':30s} {_differ(published, news[:500]):4d} / 500 lines differ")


if __name__ == "__main__":
    main()
