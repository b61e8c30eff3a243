"""Append pieces to a base model and make every appended piece reachable by BPE (invariant 5).

A Unigram model's pieces were never built by merges, so appended to a BPE base some of them have
no merge path: BPE on their own text gets stuck at a segmentation like ``[A][BC][D]`` where no
adjacent pair concatenates to a piece. The tokenizers backend also cannot merge a character that
is not itself a piece (it becomes bytes first). We repair both:

1. every character of an appended piece becomes a piece (inserted just before its first user);
2. for a stuck piece, the left-fold prefixes of its stuck segmentation (``A+BC``, ``ABC+D`` ...)
   are inserted just before it, so BPE can finish it;
3. repeat, since new pieces can divert other paths; whatever is still stuck is dropped.

All appended pieces contain only what the piece they serve contains (Han characters under the
default policy), so repairs never touch non-Chinese text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sentencepiece import sentencepiece_model_pb2 as pb

from .hf_export import build_backend, piece_table
from .spm_proto import NORMAL, clone, new_piece, next_float32_below
from .verify import Backends, unreachable_pieces

MAX_REPAIR_ROUNDS = 4


@dataclass
class Appended:
    """The merged model and how its appended pieces came to be."""

    proto: pb.ModelProto
    from_add_model: int = 0
    required_characters: list[str] = field(default_factory=list)
    intermediates: list[str] = field(default_factory=list)
    unreachable_found: int = 0
    dropped: list[str] = field(default_factory=list)
    rounds: int = 0


def appended_scores_below(start: float, count: int) -> list[float]:
    """``count`` unique float32 scores, strictly decreasing, all below ``start``."""
    scores, score = [], start
    for _ in range(count):
        score = next_float32_below(score)
        scores.append(score)
    return scores


def appended_scores(base: pb.ModelProto, count: int) -> list[float]:
    """Scores for appended pieces: below every base score, so base merges always win."""
    return appended_scores_below(min(p.score for p in base.pieces), count)


def assemble(base: pb.ModelProto, pieces: list[str], tied_zero: bool = False,
             scores: list[float] | None = None) -> pb.ModelProto:
    """Base pieces untouched, then ``pieces`` as NORMAL with strictly decreasing float32 scores."""
    merged = clone(base)
    scores = [0.0] * len(pieces) if tied_zero else (scores or appended_scores(base, len(pieces)))
    for piece, score in zip(pieces, scores):
        merged.pieces.append(new_piece(piece, score))
    return merged


class _Builder:
    """Merged models for candidate piece lists, reusing the base's piece table and scores."""

    def __init__(self, base: pb.ModelProto):
        self.base = base
        self.table = piece_table(base)
        self.scores: list[float] = []

    def scores_for(self, count: int) -> list[float]:
        if count > len(self.scores):
            start = self.scores[-1] if self.scores else min(p.score for p in self.base.pieces)
            self.scores += appended_scores_below(start, count - len(self.scores))
        return self.scores[:count]

    def backends(self, order: list[str]) -> Backends:
        self.scores_for(len(order))
        merged = assemble(self.base, order, scores=self.scores)
        table = self.table + [(p, s, NORMAL) for p, s in zip(order, self.scores)]
        return Backends(merged, build_backend(merged, add_bos=False, table=table))


def _with_characters(base_have: set[str], pieces: list[str]) -> tuple[list[str], list[str]]:
    """Insert each missing single character before the first piece that needs it."""
    have = set(base_have) | set(pieces)
    out, added = [], []
    for piece in pieces:
        for char in dict.fromkeys(piece):
            if char not in have:
                have.add(char)
                out.append(char)
                added.append(char)
        out.append(piece)
    return out, added


def _left_fold(stuck: list[str], target: str) -> list[str]:
    folds, acc = [], stuck[0]
    for part in stuck[1:-1]:
        acc += part
        folds.append(acc)
    return [f for f in folds if f != target]


def append_reachable(base: pb.ModelProto, pieces: list[str], repair: bool = True) -> Appended:
    """Append ``pieces``; with ``repair`` make every appended piece reachable or drop it."""
    n = len(base.pieces)
    base_have = {p.piece for p in base.pieces if p.type == NORMAL}
    result = Appended(proto=assemble(base, pieces))
    result.from_add_model = len(pieces)
    if not repair:
        return result
    order, result.required_characters = _with_characters(base_have, pieces)
    intermediates: set[str] = set()
    stuck_ever: set[str] = set()
    builder = _Builder(base)
    clean = False
    for round_no in range(1, MAX_REPAIR_ROUNDS + 1):
        result.rounds = round_no
        backends = builder.backends(order)
        bad = unreachable_pieces(backends, range(n, n + len(order)), order)
        if not bad:
            clean = True
            break
        stuck_ever |= {order[i - n] for i in bad}
        have = set(order) | base_have
        insert: dict[str, list[str]] = {}
        for i, got in bad.items():
            target = order[i - n]
            if "".join(got) != target:  # byte fallback inside: nothing to fold
                continue
            new = [f for f in _left_fold(got, target) if f not in have and f not in intermediates]
            if new:
                insert[target] = new
                intermediates.update(new)
                have.update(new)
        if not insert:
            break
        order = [x for piece in order for x in insert.get(piece, []) + [piece]]
    result.unreachable_found = len(stuck_ever)
    # Whatever is still stuck is dropped; dropping can strand others, so repeat to a fixpoint.
    for _ in range(0 if clean else MAX_REPAIR_ROUNDS * 4):
        bad = unreachable_pieces(builder.backends(order), range(n, n + len(order)), order)
        if not bad:
            break
        gone = {order[i - n] for i in bad}
        result.dropped += sorted(gone)
        order = [p for p in order if p not in gone]
    result.intermediates = [p for p in order if p in intermediates]
    result.proto = assemble(base, order, scores=builder.scores_for(len(order)))
    return result
