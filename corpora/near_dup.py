"""Near-duplicate documents: MinHash over character n-grams, banded LSH, then a signature check.

Web text repeats itself with small changes: reposts, templates, a paragraph quoted with a new line.
Exact dedup (``clean.dedup``) keeps all of them; a model then trains on the same text many times, and a
held-out document whose twin sits in the training part makes held-out bits/char look better than they
are. Chinese has no spaces, so documents are compared as sets of character n-grams (whitespace removed;
5 by default), the usual unit for Chinese near-dup removal.

MinHash: each n-gram is hashed once (a polynomial over code points, 64 bits), then ``permutations``
multiply-add hashes are applied and the minimum of each kept: two documents agree in one slot with
probability equal to the Jaccard similarity of their n-gram sets. Banded LSH (``bands`` x rows) finds
candidates; a candidate counts only if the share of agreeing slots reaches ``threshold``. Documents are
visited in manifest order and the first of a group is kept, so the result is deterministic.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import numpy as np

SEED = 0x5EED_2EA1_D00D  # fixed: the same text gets the same signature on every machine and run
_NGRAM_PRIME = np.uint64(1_000_003)
_CHUNK = 4096  # n-grams hashed per slice, to bound the (permutations x n-grams) temporary


@dataclasses.dataclass(frozen=True)
class NearDupSettings:
    threshold: float = 0.8  # estimated Jaccard similarity of n-gram sets at or above which a document is a copy
    ngram: int = 5  # characters per n-gram (whitespace removed first)
    permutations: int = 128  # MinHash slots; the estimate's standard error is about 0.5 / sqrt(permutations)
    bands: int = 16  # LSH bands (permutations / bands rows each); more bands find lower similarities

    def problems(self) -> list[str]:
        out = []
        if not 0 < self.threshold <= 1:
            out.append(f"threshold: must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            out.append(f"ngram: must be >= 1, got {self.ngram}")
        if self.permutations < 1 or self.bands < 1 or self.permutations % self.bands:
            out.append(f"permutations ({self.permutations}) must be a positive multiple of bands ({self.bands})")
        return out


def _multipliers(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(SEED))
    a = rng.integers(1, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
    b = rng.integers(0, 2**63, size=count, dtype=np.uint64)
    return a, b


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """The distinct 64-bit hashes of the character n-grams of ``text`` without whitespace."""
    compact = "".join(text.split())
    points = np.frombuffer(compact.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if len(points) == 0:
        return np.zeros(0, dtype=np.uint64)
    width = min(n, len(points))  # a text shorter than n is one n-gram: itself
    count = len(points) - width + 1
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        for j in range(width):
            hashes = hashes * _NGRAM_PRIME + points[j:j + count]
    return np.unique(hashes)


def ngram_jaccard(a: str, b: str, n: int = 5) -> float:
    """The exact Jaccard similarity of two texts' n-gram sets (what a signature estimates)."""
    x, y = set(ngram_hashes(a, n).tolist()), set(ngram_hashes(b, n).tolist())
    return len(x & y) / len(x | y) if x | y else 1.0


class MinHasher:
    def __init__(self, settings: NearDupSettings) -> None:
        self.settings = settings
        self.a, self.b = _multipliers(settings.permutations)

    def signature(self, text: str) -> np.ndarray:
        """``permutations`` uint32 minima; equal slots estimate the n-gram Jaccard similarity."""
        hashes = ngram_hashes(text, self.settings.ngram)
        out = np.full(self.settings.permutations, np.iinfo(np.uint32).max, dtype=np.uint32)
        with np.errstate(over="ignore"):
            for start in range(0, len(hashes), _CHUNK):
                part = hashes[start:start + _CHUNK]
                mixed = (part[None, :] * self.a[:, None] + self.b[:, None]) >> np.uint64(32)
                np.minimum(out, mixed.min(axis=1).astype(np.uint32), out=out)
        return out


@dataclasses.dataclass(frozen=True)
class Match:
    index: int  # the later document (dropped)
    kept: int  # the earlier one it copies
    similarity: float  # share of agreeing MinHash slots


class NearDupIndex:
    """Documents offered in order; each is a copy of an earlier kept one, or kept itself."""

    def __init__(self, settings: NearDupSettings) -> None:
        self.settings = settings
        self.hasher = MinHasher(settings)
        self.rows = settings.permutations // settings.bands
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(settings.bands)]
        self.signatures: dict[int, np.ndarray] = {}  # kept documents only

    def offer(self, index: int, text: str) -> Match | None:
        sig = self.hasher.signature(text)
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.settings.bands)]
        best: Match | None = None
        seen: set[int] = set()
        for band, key in enumerate(keys):
            for other in self.buckets[band].get(key, ()):
                if other in seen:
                    continue
                seen.add(other)
                similarity = float(np.mean(self.signatures[other] == sig))
                if similarity >= self.settings.threshold and (best is None or similarity > best.similarity):
                    best = Match(index, other, similarity)
        if best is not None:
            return best
        self.signatures[index] = sig
        for band, key in enumerate(keys):
            self.buckets[band].setdefault(key, []).append(index)
        return None


def find_near_duplicates(texts: Iterable[str], settings: NearDupSettings) -> Iterator[Match]:
    """The matches among ``texts`` in order (the index of each later copy and the earlier kept one)."""
    index = NearDupIndex(settings)
    for i, text in enumerate(texts):
        match = index.offer(i, text)
        if match is not None:
            yield match
