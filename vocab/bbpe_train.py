"""Learn Chinese tokens for a byte-level BPE base from streamed text, under the base's own rules.

1. Each text is tokenized by the base (its normalizer, split regex and merges) in batches; only
   counts are kept, never the text: a *segment* is a maximal run of base tokens inside one
   pre-token whose characters are all allowed (``ALLOWED``), cut at jieba word boundaries with
   ``jieba=True``. Memory grows with the number of distinct segments, not with the corpus.
2. :func:`vocab.bbpe_learn.learn_merges` continues BPE over the segment counts.
3. Tokens whose own text does not encode to them in the extended tokenizer are dropped
   (guarantee 6), then reachability is checked again, a few rounds.

Allowed code points (``han``): U+3400–U+4DBF, U+4E00–U+9FFF, U+F900–U+FAFF, U+20000–U+3134F,
U+2F800–U+2FA1F — the Han blocks ``vocab train`` uses. ``han+punct`` adds the punctuation and
symbols (Unicode category P*/S*) of U+3001–U+303F and U+FF01–U+FF60 (、。《》，：; not “” U+201C/D,
which English uses too). A merged token must decode, as UTF-8, to allowed characters only.
"""
from __future__ import annotations

import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from tokenizers import Tokenizer

from zhllama.errors import UserError

from .bbpe_base import ByteBPEBase
from .bbpe_hf import build_tokenizer
from .bbpe_learn import Learned, learn_merges

HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F), (0x2F800, 0x2FA1F))
PUNCT_RANGES = ((0x3001, 0x303F), (0xFF01, 0xFF60))
ALLOWED = ("han", "han+punct")
BATCH = 512
MAX_REACH_ROUNDS = 4


def is_han_cp(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in HAN_RANGES)


def _punct(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in PUNCT_RANGES) and unicodedata.category(chr(cp))[0] in "PS"


def char_rule(allowed: str) -> Callable[[str], bool]:
    if allowed not in ALLOWED:
        raise UserError(f"--allowed {allowed!r}: choose one of {', '.join(ALLOWED)}")
    if allowed == "han":
        return lambda ch: is_han_cp(ord(ch))
    return lambda ch: is_han_cp(ord(ch)) or _punct(ord(ch))


def bytes_rule(allowed: str) -> Callable[[bytes], bool]:
    ok_char = char_rule(allowed)

    def ok(data: bytes) -> bool:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return False  # a partial character: never a new token
        return bool(text) and all(ok_char(c) for c in text)
    return ok


@dataclass
class TrainSettings:
    new_tokens: int
    allowed: str = "han"
    jieba: bool = False
    min_count: int = 2

    def problems(self) -> list[str]:
        out = []
        if self.new_tokens < 1:
            out.append(f"new tokens: expected >= 1, got {self.new_tokens}")
        if self.allowed not in ALLOWED:
            out.append(f"allowed: choose one of {', '.join(ALLOWED)}, got {self.allowed!r}")
        if self.min_count < 1:
            out.append(f"min_count: expected >= 1, got {self.min_count}")
        return out


def _jieba_cuts(text: str) -> set[int]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    cuts, at = set(), 0
    for word in jieba.cut(text, HMM=True):
        at += len(word)
        cuts.add(at)
    return cuts


def segments_of(text: str, encoding, ok_char: Callable[[str], bool], jieba: bool) -> Iterator[tuple[int, ...]]:
    """Runs of allowed-text base tokens within one pre-token (and one jieba word)."""
    cuts = _jieba_cuts(text) if jieba else None
    run: list[int] = []
    prev_word, prev_span = None, None
    for tid, (start, end), word in zip(encoding.ids, encoding.offsets, encoding.word_ids):
        good = end > start and all(ok_char(c) for c in text[start:end])
        boundary = (word != prev_word or not good or (cuts is not None and prev_span is not None
                    and prev_span[1] == start and prev_span != (start, end) and start in cuts))
        if boundary:
            if len(run) > 1:
                yield tuple(run)
            run = []
        if good:
            run.append(tid)
        prev_word, prev_span = word, (start, end)
    if len(run) > 1:
        yield tuple(run)


def count_segments(tok: Tokenizer, texts: Iterable[str], settings: TrainSettings, stats: dict[str, Any]) -> Counter:
    """Stream ``texts`` through the base tokenizer in batches; keep only segment counts."""
    ok_char = char_rule(settings.allowed)
    counts: Counter = Counter()
    batch: list[str] = []

    def flush():
        for text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False)):
            stats["base_tokens"] += len(enc.ids)
            counts.update(segments_of(text, enc, ok_char, settings.jieba))
        batch.clear()

    for text in texts:
        stats["texts"] += 1
        stats["characters"] += len(text)
        batch.append(text)
        if len(batch) >= BATCH:
            flush()
    flush()
    stats["distinct_segments"] = len(counts)
    return counts


def unreachable(tok: Tokenizer, new: list[bytes], first_id: int) -> list[int]:
    """Indexes k of new tokens whose own text does not encode to exactly [first_id + k]."""
    texts = [t.decode("utf-8") for t in new]
    got = tok.encode_batch(texts, add_special_tokens=False)
    return [k for k, enc in enumerate(got) if enc.ids != [first_id + k]]


def learn_tokens(base: ByteBPEBase, texts: Iterable[str], settings: TrainSettings) -> tuple[list[bytes], dict[str, Any]]:
    """New tokens (merge order) and a report of how they were learned."""
    problems = settings.problems()
    if problems:
        raise UserError("invalid training settings", problems)
    started, cpu = time.time(), time.process_time()  # CPU seconds too: wall time lies on a shared machine
    stats: dict[str, Any] = {"texts": 0, "characters": 0, "base_tokens": 0}
    counts = count_segments(build_tokenizer(base), texts, settings, stats)
    if not counts:
        raise UserError("no training text with two adjacent allowed-text tokens (no Chinese in the input?)")
    stats["count_seconds"] = round(time.time() - started, 2)
    stats["count_cpu_seconds"] = round(time.process_time() - cpu, 2)
    learned: Learned = learn_merges(counts, base.tokens, base.next_id, settings.new_tokens,
                                    bytes_rule(settings.allowed), settings.min_count)
    stats["learn_seconds"] = round(time.time() - started - stats["count_seconds"], 2)
    stats["learn_cpu_seconds"] = round(time.process_time() - cpu - stats["count_cpu_seconds"], 2)
    del counts
    new, dropped = list(learned.tokens), []
    for _ in range(MAX_REACH_ROUNDS):
        bad = unreachable(build_tokenizer(base, new), new, base.next_id)
        if not bad:
            break
        dropped += [new[k].decode("utf-8") for k in bad]
        bad_set = set(bad)
        new = [t for k, t in enumerate(new) if k not in bad_set]
    stats.update({"learned": len(learned.tokens), "stopped": learned.stopped, "kept": len(new),
                  "dropped_unreachable": len(dropped), "dropped_examples": dropped[:30],
                  "first_tokens": [t.decode("utf-8") for t in new[:30]],
                  "lowest_merge_count": learned.counts[-1] if learned.counts else None,
                  "seconds": round(time.time() - started, 2)})
    return new, stats
