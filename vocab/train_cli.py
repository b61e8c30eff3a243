"""Train a Chinese SentencePiece model on a corpus manifest (its training split, weighted).

    python -m vocab train --manifest corpora_manifests/shared_zh_vocab.yaml --vocab-size 20000 --out runs/zh_vocab
    python -m vocab train --manifest M.yaml --vocab-size 20000 --out DIR --jieba
    python -m vocab train --manifest M.yaml --vocab-size 20000 --out DIR --merge-into ../shared/data/tokenizers/llama2c/tokenizer.model

Writes DIR/zh.model, DIR/zh.vocab and DIR/train_report.json (inputs' sha256, every trainer
setting, time, corpus size). With --merge-into BASE it then merges zh.model into BASE (the
`python -m vocab merge` defaults) and writes the merged Hugging Face tokenizer folder to
--merged-out (default DIR/merged).

With a byte-level BPE BASE (Llama-3/Qwen tiktoken file, tekken.json, HF tokenizer.json) there is
no SentencePiece model: --vocab-size tokens are learned by continued BPE under the base's own
pre-tokenizer and written straight to --merged-out (see `python -m vocab merge --help`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhllama.errors import UserError

from .train import TrainSettings, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainSettings(vocab_size=0)
    parser.add_argument("--manifest", required=True, help="corpus manifest YAML (its held-out slice is not used)")
    parser.add_argument("--vocab-size", type=int, required=True, help="pieces of the add-on model")
    parser.add_argument("--out", required=True, help="output folder (zh.model, zh.vocab, train_report.json)")
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default=d.model_type)
    parser.add_argument("--character-coverage", type=float, default=d.character_coverage)
    parser.add_argument("--no-split-digits", dest="split_digits", action="store_false",
                        help="keep digit runs together (only matters with --segments lines)")
    parser.add_argument("--byte-fallback", action="store_true", help="add byte pieces (off: the base has them)")
    parser.add_argument("--max-piece-length", type=int, default=d.max_piece_length, help="characters")
    parser.add_argument("--input-sentence-size", type=int, default=d.input_sentence_size,
                        help="segments sampled for training, 0 = all (bounds memory on big corpora)")
    parser.add_argument("--no-shuffle", dest="shuffle_input_sentence", action="store_false",
                        help="take the first segments instead of a uniform sample")
    parser.add_argument("--num-threads", type=int, default=d.num_threads)
    parser.add_argument("--seed", type=int, default=d.seed, help="seeds the weighted mix and the sampler")
    parser.add_argument("--jieba", action="store_true", help="pieces never cross a jieba word boundary")
    parser.add_argument("--segments", choices=["han", "lines"], default=d.segments,
                        help="han: train on runs of Han characters (default); lines: on whole lines")
    parser.add_argument("--max-segment-chars", type=int, default=d.max_segment_chars)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--merge-into", metavar="BASE", help="then merge into this base tokenizer (SentencePiece or byte-level BPE; file or HF folder)")
    parser.add_argument("--merged-out", help="folder for the merged tokenizer (default: OUT/merged)")


def run(args: argparse.Namespace) -> int:
    settings = TrainSettings(
        vocab_size=args.vocab_size, model_type=args.model_type, character_coverage=args.character_coverage,
        split_digits=args.split_digits, byte_fallback=args.byte_fallback, max_piece_length=args.max_piece_length,
        input_sentence_size=args.input_sentence_size, shuffle_input_sentence=args.shuffle_input_sentence,
        num_threads=args.num_threads, seed=args.seed, jieba=args.jieba, segments=args.segments,
        max_segment_chars=args.max_segment_chars,
    )
    if args.merge_into and not Path(args.merge_into).exists():
        raise UserError(f"--merge-into {args.merge_into}: no such file or folder")
    merged_out = Path(args.merged_out) if args.merged_out else Path(args.out) / "merged"
    from .bbpe_base import is_bbpe_base

    if args.merge_into and is_bbpe_base(args.merge_into):
        # A byte-level BPE base is extended by continued BPE (no SentencePiece model): --vocab-size
        # new tokens are learned straight into the merged folder (see vocab/bbpe_merge.py).
        from .bbpe_merge import run_from_manifest

        return run_from_manifest(args.merge_into, args.manifest, merged_out, args.vocab_size, jieba=args.jieba,
                                 seed=args.seed, overwrite=args.overwrite)
    report = train(args.manifest, settings, args.out, overwrite=args.overwrite)
    corpus, model = report["corpus"], report["model"]
    print(f"trained {model['vocab_size']} pieces ({model['multi_char_han_pieces']} multi-character Han) on "
          f"{corpus['documents']} documents, {corpus['characters']} characters, {corpus['segments']} segments "
          f"in {report['seconds']} s")
    print(f"wrote {Path(args.out) / 'zh.model'}, zh.vocab, train_report.json")
    if args.merge_into:
        from .merge import merge_tokenizers

        merged = merge_tokenizers(args.merge_into, Path(args.out) / "zh.model", merged_out, overwrite=args.overwrite)
        checks = merged.get("checks", {})
        ok = all(c.get("ok", True) for c in checks.values() if isinstance(c, dict))
        print(f"merged into {args.merge_into}: +{merged['added']} pieces, vocab {merged['vocab_size']}, "
              f"verify {'ok' if ok else 'FAILED'} -> {merged_out} (see merge_report.json there)")
    return 0
