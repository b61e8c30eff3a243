"""Continue BPE on top of a base tokenization: learn new merges of existing tokens.

Input: segments (tuples of base token ids) with their counts, where every adjacent pair may be
merged only if the merged bytes decode to allowed text (``allowed_bytes``). Each step merges the
most frequent eligible pair into a new token (ties: the smaller id pair, so runs are
reproducible) and updates the pair counts of only the segments that held it — incremental, so a
step costs what it touches, not the corpus.

Why a merge may only make Han text: a merge fires only where its bytes occur, so text without
those characters tokenizes exactly as before; and the new tokens are appended after every base
merge (lowest priority), so on any text the base's merges run to completion first and the new
ones can only shorten the result.
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

Pair = tuple[int, int]


@dataclass
class Learned:
    """New tokens in merge order (token k gets id ``first_id + k``) and what each merge saved."""

    tokens: list[bytes] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # occurrences merged (weighted by segment count)
    stopped: str = ""


class _State:
    def __init__(self, segments: Counter, token_bytes: dict[int, bytes], eligible: Callable[[bytes], bool]):
        self.words = [list(s) for s in segments]
        self.weights = list(segments.values())
        self.bytes = dict(token_bytes)
        self.known = set(token_bytes.values())
        self.eligible = eligible
        self._ok: dict[Pair, bool] = {}
        self.count: dict[Pair, int] = defaultdict(int)
        self.where: dict[Pair, set[int]] = defaultdict(set)
        for wi, word in enumerate(self.words):
            self._add(wi, word, +1)
        self.heap = [(-c, p) for p, c in self.count.items()]
        heapq.heapify(self.heap)

    def ok(self, pair: Pair) -> bool:
        if pair not in self._ok:
            merged = self.bytes[pair[0]] + self.bytes[pair[1]]
            self._ok[pair] = merged not in self.known and self.eligible(merged)
        return self._ok[pair]

    def _add(self, wi: int, word: list[int], sign: int) -> list[Pair]:
        weight, touched = self.weights[wi] * sign, []
        for pair in zip(word, word[1:]):
            if self.ok(pair):
                self.count[pair] += weight
                if sign > 0:
                    self.where[pair].add(wi)
                touched.append(pair)
        return touched

    def best(self) -> tuple[Pair, int] | None:
        while self.heap:
            neg, pair = heapq.heappop(self.heap)
            have = self.count.get(pair, 0)
            if have > 0 and self.bytes[pair[0]] + self.bytes[pair[1]] in self.known:
                self._ok[pair] = False  # another split of a token made since: it exists already
                continue
            if have == -neg and have > 0 and self._ok.get(pair):
                return pair, have
            if have > 0 and have != -neg and self._ok.get(pair):
                heapq.heappush(self.heap, (-have, pair))  # stale entry: requeue at its true count
        return None

    def merge(self, pair: Pair, new_id: int) -> None:
        a, b = pair
        merged = self.bytes[a] + self.bytes[b]
        self.bytes[new_id] = merged
        self.known.add(merged)
        touched: set[Pair] = set()
        for wi in self.where.pop(pair, ()):
            word = self.words[wi]
            self._add(wi, word, -1)
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            self.words[wi] = out
            touched.update(self._add(wi, out, +1))
        self.count.pop(pair, None)
        for p in touched:
            if self.count.get(p, 0) > 0:
                heapq.heappush(self.heap, (-self.count[p], p))


def learn_merges(segments: Counter, token_bytes: dict[int, bytes], first_id: int, n_new: int,
                 eligible: Callable[[bytes], bool], min_count: int = 2) -> Learned:
    """Up to ``n_new`` merges over ``segments``; stops early when no pair occurs ``min_count`` times."""
    state = _State(segments, token_bytes, eligible)
    learned = Learned()
    while len(learned.tokens) < n_new:
        found = state.best()
        if found is None or found[1] < min_count:
            learned.stopped = f"no eligible pair occurs {min_count}+ times"
            break
        pair, count = found
        new_id = first_id + len(learned.tokens)
        state.merge(pair, new_id)
        learned.tokens.append(state.bytes[new_id])
        learned.pairs.append(pair)
        learned.counts.append(count)
    else:
        learned.stopped = f"reached {n_new} new tokens"
    return learned
