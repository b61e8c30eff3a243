"""Which benchmark items does a training corpus contain? N-gram overlap, as GPT-3 and LLaMA-2 measured it.

    index = ItemIndex(items, ContaminationSettings())      # items: [(benchmark, split, Item-like)]
    for doc in documents: index.scan(doc_id, doc.text)     # every training document once
    verdicts = index.verdicts()                           # per item: coverage, status, documents

Text is compared as *units*: after NFKC and casefolding, every Han (or kana, hangul) character is one
unit and every run of other letters and digits (an English word, a number) is one unit; spaces and
punctuation are dropped. So "下列说法，正确的是" matches "下列说法正确的是" and "The cat" matches
"the cat!" — reformatting does not hide a copy. Chinese has no spaces, so a character is its word.
With ``t2s`` both sides are first converted from Traditional to Simplified characters.

Each field of an item (the question, each choice) is cut into grams of ``ngram`` units (13, as GPT-3
used words). A field shorter than that but of at least ``min_units`` is one gram of its own length;
shorter fields ("1949年") are too common to mean anything and are not checked. A gram shared by
``max_items`` or more items is a template ("以下关于…的说法正确的是") and is dropped. An item's
*coverage* is the share of its checked units inside grams found in the corpus: ``contaminated`` at
``min_coverage`` or more (the question, or most of it, is in the corpus verbatim), ``partial`` below
that, ``clean`` when no gram was found, ``unchecked`` when no field was long enough.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
import zlib
from collections.abc import Sequence

from zhllama.errors import UserError

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f"
_PRIVATE = "\U000f0000-\U0010fffd"  # where words go: one code point per word
_PRIVATE_RE = re.compile(f"[{_PRIVATE}]")
_WORD_RE = re.compile(rf"[^\W_{_CJK}]+")
_DROP_RE = re.compile(f"[^{_CJK}{_PRIVATE}]+")
_WORD_SLOTS = 0x10FFFD - 0xF0000
# A gram's place is item << _AT_BITS | its first unit in the item: one int per gram (a list of tuples per
# gram took 1.3x the memory of the whole index).
_AT_BITS = 24
_AT_MASK = (1 << _AT_BITS) - 1


def _word_unit(match: re.Match) -> str:
    # A stable hash: a gram of 13 units only collides if every word in it does.
    return chr(0xF0000 + zlib.crc32(match.group().encode("utf-8")) % _WORD_SLOTS)


def units(text: str, t2s: bool = False) -> str:
    """The text as a string of units, one character each (see the module doc); ``t2s`` first maps
    Traditional to Simplified characters, so a copy in the other script is found too."""
    if t2s:
        from corpora.cleaning import t2s as to_simplified

        text = to_simplified(text)
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PRIVATE_RE.sub("", text)  # private-use characters in the input would pose as words
    return _DROP_RE.sub("", _WORD_RE.sub(_word_unit, text))


@dataclasses.dataclass(frozen=True)
class ContaminationSettings:
    ngram: int = 13  # units per gram
    min_units: int = 8  # a field this long but under ngram is one gram of its own; shorter ones are skipped
    max_items: int = 5  # a gram found in this many items or more is a template, not an item's identity
    min_coverage: float = 0.5  # share of an item's checked units in found grams that makes it contaminated
    t2s: bool = False  # compare after Traditional -> Simplified (OpenCC t2s) on both sides

    def problems(self) -> list[str]:
        out = []
        if self.ngram < 2:
            out.append(f"ngram: expected >= 2, got {self.ngram}")
        if not 1 <= self.min_units <= self.ngram:
            out.append(f"min-units: expected 1..ngram ({self.ngram}), got {self.min_units}")
        if self.max_items < 2:
            out.append(f"max-items: expected >= 2, got {self.max_items}")
        if not 0 < self.min_coverage <= 1:
            out.append(f"min-coverage: expected a number in (0, 1], got {self.min_coverage}")
        return out


@dataclasses.dataclass
class Verdict:
    coverage: float  # share of checked units covered by found grams (0 when unchecked)
    checked_units: int
    status: str  # clean | partial | contaminated | unchecked
    documents: list[int]  # ids of the documents that contained any of its grams, in scan order


class ItemIndex:
    """The grams of every item, and which of them the scanned documents contained."""

    def __init__(self, fields_per_item: Sequence[Sequence[str]], settings: ContaminationSettings):
        self.settings = settings
        self.checked_units = [0] * len(fields_per_item)
        # gram -> its place (item << _AT_BITS | first unit of the gram in the item's checked units), or a
        # tuple of places when several items (or spots) hold it
        by_length: dict[int, dict[str, int | tuple[int, ...]]] = {}
        for item, fields in enumerate(fields_per_item):
            for field in fields:
                self._add_field(by_length, item, units(field, settings.t2s))
        self.templates = 0
        for grams in by_length.values():
            for gram in [g for g, value in grams.items() if isinstance(value, tuple)
                         and len({place >> _AT_BITS for place in value}) >= settings.max_items]:
                del grams[gram]
                self.templates += 1
        self.grams = {length: grams for length, grams in by_length.items() if grams}
        # One lookup per position: only where the shortest gram length's prefix is some gram's prefix
        # are the grams of each length looked up (6 lengths cost one pass, not six).
        self.prefix_length = width = min(self.grams, default=settings.min_units)
        shortest = self.grams.get(width, {})
        self.prefixes = set(shortest).union(  # the shortest grams' own strings: no copies of them
            g[:width] for length, grams in self.grams.items() if length != width for g in grams)
        self.lengths = sorted(self.grams)
        self.found: list[set[tuple[int, int]]] = [set() for _ in fields_per_item]  # (start, length) covered
        self.documents: list[list[int]] = [[] for _ in fields_per_item]

    def _add_field(self, by_length: dict, item: int, field: str) -> None:
        n = self.settings.ngram
        if len(field) < self.settings.min_units:
            return
        length = min(n, len(field))
        grams = by_length.setdefault(length, {})
        base = self.checked_units[item]
        if base + len(field) >= 1 << _AT_BITS:
            raise UserError(f"an evaluation item of over {1 << _AT_BITS:,} units cannot be checked")
        for start in range(len(field) - length + 1):
            gram, place = field[start:start + length], item << _AT_BITS | base + start
            held = grams.get(gram)
            grams[gram] = place if held is None else (held, place) if isinstance(held, int) else (*held, place)
        self.checked_units[item] += len(field)

    def scan(self, doc_id: int, text: str) -> set[int]:
        """Record every gram ``text`` contains; returns the items it touched."""
        seq = units(text, self.settings.t2s)
        touched: set[int] = set()
        prefixes, width = self.prefixes, self.prefix_length
        for start in range(len(seq) - width + 1):
            if seq[start:start + width] not in prefixes:
                continue
            for length in self.lengths:
                held = self.grams[length].get(seq[start:start + length])
                if held is None:
                    continue
                for place in (held,) if isinstance(held, int) else held:
                    item = place >> _AT_BITS
                    self.found[item].add((place & _AT_MASK, length))
                    touched.add(item)
        for item in touched:
            self.documents[item].append(doc_id)
        return touched

    def absorb(self, found: list[set[tuple[int, int]]], documents: list[list[int]]) -> None:
        """Add what another index over the same items found (another process's share of the corpus)."""
        for item, (grams, docs) in enumerate(zip(found, documents)):
            self.found[item] |= grams
            if docs:
                self.documents[item] = sorted(self.documents[item] + docs)

    def verdicts(self) -> list[Verdict]:
        out = []
        for item, total in enumerate(self.checked_units):
            covered: set[int] = set()
            for at, length in self.found[item]:
                covered.update(range(at, at + length))
            coverage = len(covered) / total if total else 0.0
            if not total:
                status = "unchecked"
            elif not covered:
                status = "clean"
            else:
                status = "contaminated" if coverage >= self.settings.min_coverage else "partial"
            out.append(Verdict(round(coverage, 4), total, status, self.documents[item]))
        return out
