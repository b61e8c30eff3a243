"""Quality of `python -m vocab merge` against the base and the published Chinese-LLaMA-Alpaca merges.

    python benchmarks/merge_quality.py [--data ../shared/data]

Prints, for each tokenizer: vocab size, tokens per character on cmrc2018_dev_contexts.txt
(sentencepiece ids, no BOS), English lines of wiki_demo_en.txt that tokenize differently from the
base, and lines of all shared text where the HF tokenizer's ids differ from sentencepiece's.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from vocab.hf_export import build_backend
from vocab.merge import merge_tokenizers
from vocab.spm_proto import load_model_proto
from vocab.verify import Backends, check_same_ids, shared_text_files, text_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    toks = args.data / "tokenizers"
    base, add = toks / "llama2c" / "tokenizer.model", toks / "chinese_llama_alpaca" / "chinese_sp.model"
    cmrc = text_lines([args.data / "pretrain" / "cmrc2018_dev_contexts.txt"])
    english = text_lines([args.data / "pretrain" / "wiki_demo_en.txt"])
    everything = text_lines(shared_text_files(args.data))
    chars = sum(len(line) for line in cmrc)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        merge_tokenizers(base, add, Path(tmp) / "ours", verify=False)
        seconds = time.perf_counter() - started
        merge_tokenizers(base, add, Path(tmp) / "cla", policy="chinese-llama-alpaca", verify=False)
        candidates = {
            "base llama2c": base,
            "ours (--policy han)": Path(tmp) / "ours" / "tokenizer.model",
            "Chinese-LLaMA-Alpaca way (score 0)": Path(tmp) / "cla" / "tokenizer.model",
            "Chinese-LLaMA-Alpaca-2 published": toks / "chinese_llama_alpaca_2" / "tokenizer.model",
        }
        base_sp = spm.SentencePieceProcessor(model_file=str(base))
        base_english = base_sp.encode(english)
        print(f"merge time (ours, no verify): {seconds:.1f} s")
        print(f"cmrc2018_dev_contexts.txt: {len(cmrc)} lines, {chars} characters; "
              f"all shared text: {len(everything)} lines")
        print(f"{'tokenizer':38} {'vocab':>6} {'tok/char':>9} {'vs base':>8} {'en lines changed':>17} "
              f"{'HF!=SP lines':>13}")
        base_tpc = None
        for name, path in candidates.items():
            proto = load_model_proto(path)
            backends = Backends(proto, build_backend(proto, add_bos=False))
            tpc = sum(len(ids) for ids in backends.sp_ids(cmrc)) / chars
            base_tpc = base_tpc or tpc
            changed = sum(a != b for a, b in zip(base_english, backends.sp_ids(english)))
            differ = check_same_ids(backends, everything)["lines_differ"]
            print(f"{name:38} {len(proto.pieces):>6} {tpc:>9.4f} {tpc / base_tpc:>8.3f} "
                  f"{changed:>8}/{len(english):<8} {differ:>13}")


if __name__ == "__main__":
    main()
