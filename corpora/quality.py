"""Heuristic quality rules for Chinese (and mixed) web text: which documents to leave out, and why.

    settings = QualitySettings()                       # Gopher's thresholds, made for Chinese text
    failed = settings.failures(text, chinese=True)    # [] or [("dup_ngram_10", 0.41), ...]

Gopher's repetition rules (Rae et al. 2021, table A1) count words. Chinese has no spaces, and a word
segmenter would make the verdict depend on its dictionary, so here the units are characters for Han
text and runs of letters/digits otherwise ("模型 learns 中文" -> 模, 型, learns, 中, 文). A Chinese
word is ~1.5 characters, so Gopher's word n-grams become longer unit n-grams (top 4/6/8-grams
instead of 2/3/4, duplicated 10- and 20-grams instead of 5..10), with thresholds chosen on clean
Wikipedia and instruction text (benchmarks/quality_filter.py: ~0 of clean documents flagged).
Rules Gopher lacks, for the failures of Chinese crawls:

- ``mojibake``: text decoded with the wrong codec. UTF-8 read as GBK gives valid but rare Han
  characters (鐨勪竴 for 的一), and GBK read as Latin-1 or UTF-8 as cp1252 gives ä¸­æ–‡; both are
  found exactly, by encoding a run back and decoding it with the right codec. ``锟斤拷`` (a
  replacement character decoded twice) and U+FFFD count too.
- ``symbols``: characters that are not text — emoji, box drawing, private use, control characters.
- ``cjk``: for sources whose ``language`` is Chinese, documents that are mostly not Chinese (menus,
  code, number tables that slipped into a Chinese source).

A document fails if any rule does; the report counts each rule (a document may fail several).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import sys
import unicodedata

import numpy as np

from .cleaning import _CJK_RE

# a unit: one Han character, or a run of other letters/digits (punctuation and spaces are not units)
_HAN = _CJK_RE.pattern[1:-1]
_UNIT_RE = re.compile(f"[{_HAN}]|[^\\W{_HAN}_]+")
_NON_ASCII_RUN_RE = re.compile(r"[^\x00-\x7f\ufffd]{4,}")
_LINE_SPLIT_RE = re.compile(r"\n+")
_NOT_TEXT = ("So", "Co", "Cn", "Cs", "Cc")  # other symbols (emoji, box drawing), private use, unassigned, ...
_SPACE_RE = re.compile(r"\s")
_DOUBLE_DECODED = ("锟斤拷", "\ufffd")  # U+FFFD's UTF-8 bytes read as GBK (twice), and U+FFFD itself
REPETITION_MIN_UNITS = 50  # shorter documents are too short to judge by repetition (Gopher: >= 50 words)


@dataclasses.dataclass(frozen=True)
class QualitySettings:
    """Thresholds; a document fails a rule above its maximum (below its minimum). 0 or 1 turns a rule off."""

    max_dup_line_fraction: float = 0.3  # lines that repeat an earlier line, of all lines
    max_dup_line_char_fraction: float = 0.2  # characters in such lines, of all characters
    max_top_4gram_fraction: float = 0.25  # unit characters covered by the most frequent unit 4-gram
    max_top_6gram_fraction: float = 0.22
    max_top_8gram_fraction: float = 0.22
    max_dup_10gram_fraction: float = 0.3  # unit characters inside 10-grams seen before in the document
    max_dup_20gram_fraction: float = 0.2
    max_symbol_fraction: float = 0.1  # non-text characters, of non-space characters
    max_mojibake_fraction: float = 0.05  # characters in wrongly decoded runs, of non-space characters
    min_cjk_fraction: float = 0.2  # Chinese sources only: Han characters, of non-space characters

    def problems(self) -> list[str]:
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                out.append(f"{f.name.replace('_', '-')}: a fraction from 0 to 1, got {value!r}")
        return out

    def failures(self, text: str, chinese: bool) -> list[tuple[str, float]]:
        """The rules ``text`` fails, each with its measured value (rounded)."""
        signals = measure(text, chinese)
        failed = []
        for name, value in signals.items():
            limit = getattr(self, ("min_" if name == "cjk_fraction" else "max_") + name)
            if name == "cjk_fraction":
                if 0 < limit and value < limit:
                    failed.append((name, round(value, 4)))
            elif 0 < limit < 1 and value > limit:
                failed.append((name, round(value, 4)))
        return failed


def rule_names() -> list[str]:
    return [f.name.removeprefix("max_").removeprefix("min_") for f in dataclasses.fields(QualitySettings)]


def measure(text: str, chinese: bool) -> dict[str, float]:
    """Every signal of one document (``cjk_fraction`` only when ``chinese``)."""
    units = _UNIT_RE.findall(text)
    visible = (len(text) - len(_SPACE_RE.findall(text))) or 1
    out = dict.fromkeys(("dup_line_fraction", "dup_line_char_fraction", "top_4gram_fraction", "top_6gram_fraction",
                         "top_8gram_fraction", "dup_10gram_fraction", "dup_20gram_fraction"), 0.0)
    if len(units) >= REPETITION_MIN_UNITS:
        lines = [line for line in _LINE_SPLIT_RE.split(text.strip()) if line]
        dup_lines, dup_line_chars = _duplicates(lines)
        out["dup_line_fraction"] = dup_lines / max(len(lines), 1)
        out["dup_line_char_fraction"] = dup_line_chars / max(len(text), 1)
        out.update(_ngram_signals(units))
    out["symbol_fraction"] = len(_not_text_re().findall(text)) / visible
    out["mojibake_fraction"] = mojibake_chars(text) / visible
    if chinese:
        out["cjk_fraction"] = len(_CJK_RE.findall(text)) / visible
    return out


def _duplicates(items: list[str]) -> tuple[int, int]:
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: n-gram hashes are polynomials in it, mod 2**64


def _ngram_signals(units: list[str]) -> dict[str, float]:
    """Top and duplicated unit n-gram character fractions, vectorised (hash collisions: ~n^2 / 2**64)."""
    table: dict[str, int] = {}
    ids = np.fromiter((table.setdefault(u, len(table) + 1) for u in units), dtype=np.uint64, count=len(units))
    chars = np.fromiter(map(len, units), dtype=np.int64, count=len(units))
    ends = np.concatenate([[0], np.cumsum(chars)])  # characters before unit i
    total = int(ends[-1])
    out = {}
    hashes, power = np.zeros(len(units), dtype=np.uint64), np.uint64(1)
    with np.errstate(over="ignore"):
        for n in range(1, 21):
            hashes = hashes[: len(units) - n + 1] + ids[n - 1 :] * power  # hashes[i]: the n-gram starting at i
            power = power * _HASH_BASE
            if n in (4, 6, 8):
                out[f"top_{n}gram_fraction"] = _top_share(hashes, ends, n, total)
            elif n in (10, 20):
                out[f"dup_{n}gram_fraction"] = _repeated_share(hashes, chars, n, total)
    return out


def _top_share(hashes: np.ndarray, ends: np.ndarray, n: int, total: int) -> float:
    """Characters covered by the most frequent n-gram (of those, the longest), every occurrence counted."""
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    most = int(counts.max())
    if most < 2:
        return 0.0
    starts = first[counts == most]
    return most * int((ends[starts + n] - ends[starts]).max()) / total


def _repeated_share(hashes: np.ndarray, chars: np.ndarray, n: int, total: int) -> float:
    """Characters inside any n-gram that occurred earlier in the document (Gopher's duplicated n-grams)."""
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    starts = np.flatnonzero(first[inverse] != np.arange(len(hashes)))
    if not len(starts):
        return 0.0
    depth = np.zeros(len(chars) + 1, dtype=np.int64)
    np.add.at(depth, starts, 1)
    np.add.at(depth, starts + n, -1)
    return int(chars[np.cumsum(depth[:-1]) > 0].sum()) / total


@functools.cache
def _not_text_re() -> re.Pattern:
    """A character class of every code point in _NOT_TEXT (built once: ~0.3 s) and U+FFFD, less layout."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and (unicodedata.category(chr(cp)) in _NOT_TEXT or cp == 0xFFFD) \
            and chr(cp) not in "\n\t\r"
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(f"\\U{start:08x}-\\U{cp - 1:08x}")
            start = None
    return re.compile("[" + "".join(ranges) + "]")


def mojibake_chars(text: str) -> int:
    """Characters of runs that were decoded with the wrong codec (see the module docstring)."""
    chars = sum(text.count(marker) * len(marker) for marker in _DOUBLE_DECODED)
    for run in _NON_ASCII_RUN_RE.findall(text):
        if _misdecoded(run):
            chars += len(run)
    return chars


def _misdecoded(run: str) -> bool:
    """Whether the run is UTF-8 shown through GBK, cp1252 or Latin-1: encoding it back gives mostly valid UTF-8.

    A run cut out of such text may start or end inside a UTF-8 character, so a few bytes at its edges do
    not decode; real Chinese in GBK gives invalid UTF-8 almost everywhere (its lead bytes 0xB0-0xBF are
    UTF-8 continuation bytes, and most of its byte pairs are no UTF-8 sequence)."""
    for codec in ("gbk", "cp1252", "latin-1"):
        try:
            fixed = run.encode(codec).decode("utf-8", errors="replace")
        except UnicodeEncodeError:
            continue
        bad = fixed.count("\ufffd")
        if len(fixed) - bad >= 3 and bad <= 2 + len(fixed) // 10 and len(fixed) < len(run):
            return True
    return False
