"""Train the Chinese add-on SentencePiece model from a corpus manifest, streaming.

Design (why the settings are what they are):

- The add-on model exists to be merged into a LLaMA-family BPE base, whose merge keeps only Han
  pieces (vocab.merge_policy). So by default the trainer sees only *Han runs*: maximal stretches
  of Han ideographs, each fed as its own sentence (``segments="han"``). No vocabulary slot is
  spent on Latin/digit pieces the merge would throw away, no piece can span Chinese and
  non-Chinese text (so merged pieces cannot change English), and no piece starts with "▁"
  (``add_dummy_prefix=False``), so every piece applies in the middle of unspaced Chinese.
- BPE by default: every piece has a merge path, so appended to a BPE base it is reachable.
- ``jieba=True`` cuts each Han run into jieba words and feeds each word as its own sentence.
  SentencePiece never builds a piece across two sentences, so pieces stay inside jieba words;
  the words carry no separator and no "▁", so at inference the pieces apply to unspaced text
  (no jieba needed then). Pieces are *sub-words or whole words*, never cross-word fragments
  like "的中".
- Memory stays bounded on any corpus size: documents stream from the manifest's weighted mix
  (``iter_weighted``) into ``sentence_iterator``; SentencePiece keeps a uniform reservoir sample
  of ``input_sentence_size`` segments (``shuffle_input_sentence``), not the corpus.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import sentencepiece as spm
from tqdm import tqdm

from zhllama.errors import UserError
from zhllama.files import atomic_output_dir, sha256_file, write_json_atomic

from corpora.cleaning import cjk_count
from corpora.manifest import Manifest, iter_weighted, load_manifest

# Han ideographs only (no CJK punctuation): the same set the merge's default policy keeps.
HAN_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\U0002f800-\U0002fa1f]+")


@dataclasses.dataclass
class TrainSettings:
    """Every setting of one training run (all go into train_report.json)."""

    vocab_size: int  # pieces of the add-on model, including the unk, bos and eos pieces
    model_type: Literal["bpe", "unigram"] = "bpe"  # BPE: every piece has a merge path
    character_coverage: float = 0.9995  # share of characters covered; rarer ones stay out
    split_digits: bool = True  # as LLaMA: digits are single pieces (only matters for segments=lines)
    byte_fallback: bool = False  # the base already has byte pieces; the add-on model needs none
    max_piece_length: int = 16  # longest piece, in characters
    input_sentence_size: int = 5_000_000  # segments sampled for training (0 = all of them)
    shuffle_input_sentence: bool = True  # reservoir-sample the segments instead of taking the first
    num_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0  # seeds the weighted mix and SentencePiece's sampler
    jieba: bool = False  # pieces never cross jieba word boundaries
    segments: Literal["han", "lines"] = "han"  # han: Han runs only; lines: every line of text as is
    max_segment_chars: int = 1000  # longer segments are cut (SentencePiece skips overlong sentences)

    def validate(self) -> list[str]:
        problems = []
        if self.vocab_size < 8:
            problems.append(f"vocab_size: expected at least 8, got {self.vocab_size}")
        if not 0 < self.character_coverage <= 1:
            problems.append(f"character_coverage: expected a number in (0, 1], got {self.character_coverage}")
        if self.max_piece_length < 1 or self.max_segment_chars < 1 or self.num_threads < 1:
            problems.append("max_piece_length, max_segment_chars and num_threads must be >= 1")
        if self.input_sentence_size < 0:
            problems.append(f"input_sentence_size: expected >= 0, got {self.input_sentence_size}")
        if self.model_type not in ("bpe", "unigram"):
            problems.append(f"model_type: expected bpe or unigram, got {self.model_type!r}")
        if self.segments not in ("han", "lines"):
            problems.append(f"segments: expected han or lines, got {self.segments!r}")
        return problems

    def trainer_kwargs(self) -> dict[str, Any]:
        """The exact SentencePieceTrainer settings (besides the iterator and writer)."""
        return {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "character_coverage": self.character_coverage,
            "split_digits": self.split_digits,
            "byte_fallback": self.byte_fallback,
            "max_sentencepiece_length": self.max_piece_length,
            "input_sentence_size": self.input_sentence_size,
            "shuffle_input_sentence": self.shuffle_input_sentence,
            "num_threads": self.num_threads,
            "max_sentence_length": self.max_segment_chars * 4 + 16,  # bytes; UTF-8 is <= 4 per char
            "normalization_rule_name": "identity",  # as LLaMA: the merge keeps the base's normaliser
            "add_dummy_prefix": False,  # no "▁"-pieces: Chinese has no spaces to attach them to
            "remove_extra_whitespaces": False,
            "split_by_whitespace": True,
            "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1,
            "hard_vocab_limit": True,
            "minloglevel": 2,
        }


def jieba_cutter() -> Callable[[str], list[str]]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return lambda text: jieba.lcut(text, HMM=True)


def training_segments(text: str, settings: TrainSettings, cut: Callable[[str], list[str]] | None = None
                      ) -> Iterator[str]:
    """The sentences SentencePiece sees for one document (see the module doc)."""
    if settings.segments == "han":
        runs = HAN_RUN.findall(text)
    else:
        runs = [line for line in text.split("\n") if line.strip()]
    n = settings.max_segment_chars
    for run in runs:
        for word in (cut(run) if cut else (run,)):
            if not word.strip():
                continue
            for i in range(0, len(word), n):
                yield word[i:i + n]


@dataclasses.dataclass
class CorpusCount:
    documents: int = 0
    characters: int = 0
    cjk_characters: int = 0
    segments: int = 0
    segment_characters: int = 0
    by_source: Counter = dataclasses.field(default_factory=Counter)


def _sentences(manifest: Manifest, settings: TrainSettings, count: CorpusCount) -> Iterator[str]:
    cut = jieba_cutter() if settings.jieba else None
    docs = iter_weighted(manifest, seed=settings.seed, split="train")
    for doc in tqdm(docs, desc="training text", unit=" docs", disable=None):
        count.documents += 1
        count.characters += len(doc.text)
        count.cjk_characters += cjk_count(doc.text)
        count.by_source[doc.source] += 1
        for segment in training_segments(doc.text, settings, cut):
            count.segments += 1
            count.segment_characters += len(segment)
            yield segment


def train_model_proto(sentences: Iterator[str], settings: TrainSettings) -> bytes:
    """Run SentencePiece on an iterator of sentences; return the serialized model."""
    spm.set_random_generator_seed(settings.seed)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences, model_writer=writer, **settings.trainer_kwargs())
    except RuntimeError as exc:
        raise UserError(spm_failure_message(str(exc), settings)) from None
    return writer.getvalue()


def spm_failure_message(error: str, settings: TrainSettings) -> str:
    """SentencePiece's INTERNAL errors as one line saying which way to move --vocab-size."""
    low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", error)
    if low:
        return (f"vocab_size {settings.vocab_size} (--vocab-size) is too small: the text has {low.group(2)} distinct characters "
                f"(with the special pieces) that must each be a piece; raise --vocab-size to at least "
                f"{low.group(2)} or lower --character-coverage")
    high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", error)
    if high:
        return (f"vocab_size {settings.vocab_size} (--vocab-size) is too large for this text: at most {high.group(2)} pieces can "
                f"be learned from it; lower --vocab-size or add text")
    if "sentences_.empty()" in error:
        return "no training text reached SentencePiece (every segment was empty or too long); add text"
    return f"SentencePiece training failed: {error}"


def vocab_lines(model: bytes) -> str:
    """The ``.vocab`` text SentencePiece writes next to a model: piece TAB score."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))


def train(manifest_path: str | Path, settings: TrainSettings, out: str | Path, *, overwrite: bool = False
          ) -> dict[str, Any]:
    """Train on the manifest's training split; write out/zh.model, zh.vocab, train_report.json."""
    problems = settings.validate()
    if problems:
        raise UserError("invalid training settings", problems)
    if Path(out).exists() and not overwrite:  # fail before the (slow) training, not after it
        raise UserError(f"output folder {out} already exists (pass --overwrite to replace it)")
    manifest = load_manifest(manifest_path)
    started = time.time()
    count = CorpusCount()
    sentences = _sentences(manifest, settings, count)
    first = next(sentences, None)  # SentencePiece fails on an empty corpus with an INTERNAL error
    if first is None:
        raise UserError(f"{manifest.path}: no training text (every source empty, held out or weight 0"
                        + (", or no Han characters: segments=han keeps only Chinese" if settings.segments == "han"
                           else "") + ")")
    model = train_model_proto(itertools.chain([first], sentences), settings)
    seconds = time.time() - started
    sp = spm.SentencePieceProcessor(model_proto=model)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    report = {
        "command": "python -m vocab train",
        "manifest": {
            "path": str(manifest.path), "name": manifest.name, "sha256": sha256_file(manifest.path),
            "fingerprint": manifest.fingerprint(), "split": "train", "holdout": dataclasses.asdict(manifest.holdout),
            "files": {s.name: s.sha256 for s in manifest.sources},
            "weights": {s.name: s.weight for s in manifest.sources},
        },
        "settings": dataclasses.asdict(settings),
        "sentencepiece_trainer": settings.trainer_kwargs(),
        "versions": {"sentencepiece": spm.__version__, "jieba": _jieba_version() if settings.jieba else None},
        "corpus": {**{k: v for k, v in dataclasses.asdict(count).items() if k != "by_source"},
                   "documents_by_source": dict(count.by_source)},
        "model": {"vocab_size": len(pieces), "han_pieces": sum(bool(HAN_RUN.fullmatch(p)) for p in pieces),
                  "multi_char_han_pieces": sum(len(p) > 1 and bool(HAN_RUN.fullmatch(p)) for p in pieces)},
        "seconds": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "zh.model").write_bytes(model)
        (tmp / "zh.vocab").write_text(vocab_lines(model), encoding="utf-8")
        report["model"]["sha256"] = sha256_file(tmp / "zh.model")
        write_json_atomic(tmp / "train_report.json", report)
    return report


def _jieba_version() -> str:
    import jieba

    return getattr(jieba, "__version__", "unknown")
