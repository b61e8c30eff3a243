"""Which pieces of the Chinese model get appended to the base, and with what scores.

Policies (``--policy``):

``han`` (default)
    Append a piece only if, apart from one leading "▁", it is made of Han ideographs. A BPE merge
    can only fire where its whole string occurs in the text, so such pieces cannot change how text
    without Han characters tokenizes (invariant 2). Scores are unique and strictly below every base
    score, in the add model's order, so base merges always win and ties never happen (invariant 4).

``chinese-llama-alpaca``
    The original Chinese-LLaMA-Alpaca ``merge_tokenizers.py``: every piece not already in the base,
    type NORMAL, score 0. Kept to reproduce published vocabularies (49,953 pieces for LLaMA +
    chinese_sp.model). Score 0 outranks every base merge, so non-CJK pieces such as ``2016`` or
    ``——`` change English; its tied scores also make HF ids differ. It fails ``--verify``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sentencepiece import sentencepiece_model_pb2 as pb

from .spm_proto import NORMAL, WHITESPACE, is_han

POLICIES = ("han", "chinese-llama-alpaca")
DEFAULT_POLICY = "han"


@dataclass
class Selection:
    """Pieces chosen from the add model, in append order, and what was left out."""

    pieces: list[str] = field(default_factory=list)
    skipped_duplicate: int = 0
    skipped_by_policy: list[str] = field(default_factory=list)
    tied_zero_scores: bool = False  # chinese-llama-alpaca: every appended score is 0
    fix_reachability: bool = True


def han_piece(piece: str) -> bool:
    body = piece[1:] if piece.startswith(WHITESPACE) else piece
    return bool(body) and all(is_han(c) for c in body)


def select_pieces(base: pb.ModelProto, add: pb.ModelProto, policy: str) -> Selection:
    """Walk the add model in its own order (best score first for Unigram, merge order for BPE)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    have = {p.piece for p in base.pieces}
    sel = Selection()
    if policy == "chinese-llama-alpaca":
        sel.tied_zero_scores, sel.fix_reachability = True, False
    for p in add.pieces:
        if p.piece in have:
            sel.skipped_duplicate += 1
            continue
        if policy == "han" and not (p.type == NORMAL and han_piece(p.piece)):
            sel.skipped_by_policy.append(p.piece)
            continue
        have.add(p.piece)
        sel.pieces.append(p.piece)
    return sel
