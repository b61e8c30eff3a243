"""Which new embedding row gets which initialisation, and computing those rows.

A new piece of the merged vocabulary is text the base model already read, only as several base
pieces. Decomposing the piece's surface with the BASE SentencePiece model (the merged model cut
back to its first ``base_vocab_size`` pieces, which the merge keeps byte-identical) gives exactly
those pieces, and their mean row is where the new row should start.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from zhllama.errors import UserError
from zhllama.tokenizer_files import is_bbpe_extension, looks_like_tiktoken, read_sp_proto, tokenizer_json_pieces

SP_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
MERGE_REPORT = "merge_report.json"
METHODS = ("subtoken-mean", "spelling", "mean", "random")
SPELLED_METHODS = ("subtoken-mean", "spelling")  # methods that decompose new pieces with the base tokenizer

# Row rules, as counted in resize_report.json.
RULE_SUBTOKEN = "subtoken-mean"
RULE_RANDOM = "random"
RULE_MEAN = "mean"
RULE_SPECIAL = "mean (control, reserved or added special piece)"
RULE_UNDECOMPOSABLE = "mean (base tokenizer cannot spell it)"
RULE_PADDING = "mean (padding row beyond the tokenizer)"

_SPECIAL_TEXT = re.compile(r"^<[^<>\s]+>$")  # <pad>, <reserved_12>, <|im_end|> ...


@dataclass
class TokenizerInfo:
    """What the resize needs to know about a tokenizer folder, read without transformers."""

    folder: Path
    size: int  # number of ids the tokenizer can produce
    pieces: list[str | None]  # surface per id (None where unknown)
    special_ids: set[int] = field(default_factory=set)
    sp_proto: object | None = None  # sentencepiece ModelProto when tokenizer.model exists
    merge_report: dict = field(default_factory=dict)


def read_tokenizer(folder: Path) -> TokenizerInfo:
    """Pieces, size and special ids of a tokenizer folder (tokenizer.model and/or tokenizer.json)."""
    folder = Path(folder)
    sp_path, hf_path = folder / SP_FILE, folder / HF_FILE
    if not sp_path.is_file() and not hf_path.is_file():
        raise UserError(f"{folder} is not a tokenizer folder (no {SP_FILE} or {HF_FILE})")
    pieces: dict[int, str] = {}
    special: set[int] = set()
    proto = None
    # Llama-3's tiktoken tokenizer.model beside a tokenizer.json (a folder extended before the rank file
    # moved to original/, or copied so by hand): tokenizer.json is the tokenizer, not SentencePiece.
    if sp_path.is_file() and not (hf_path.is_file() and looks_like_tiktoken(sp_path)):
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = read_sp_proto(sp_path)
        kinds = pb.ModelProto.SentencePiece
        for i, piece in enumerate(proto.pieces):
            pieces[i] = piece.piece
            if piece.type in (kinds.CONTROL, kinds.UNKNOWN, kinds.UNUSED, kinds.BYTE) or (
                piece.type == kinds.USER_DEFINED and _SPECIAL_TEXT.match(piece.piece)
            ):
                special.add(i)
    if hf_path.is_file():
        vocab, added = tokenizer_json_pieces(hf_path)
        for i, text in vocab.items():
            pieces.setdefault(i, text)
        for token in added:
            i = int(token["id"])
            pieces.setdefault(i, token["content"])
            if token.get("special") or _SPECIAL_TEXT.match(token["content"]):
                special.add(i)
    report: dict = {}
    if (folder / MERGE_REPORT).is_file():
        try:
            report = json.loads((folder / MERGE_REPORT).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{folder / MERGE_REPORT}: not valid JSON ({exc})") from None
    size = max(pieces) + 1 if pieces else 0
    return TokenizerInfo(folder, size, [pieces.get(i) for i in range(size)], special, proto, report)


def base_size_of(tok: TokenizerInfo) -> int | None:
    """N such that ids 0..N-1 are the base tokenizer's, from the merge report (None if unknown)."""
    value = tok.merge_report.get("base_vocab_size")
    if value is None:
        return None
    if not isinstance(value, int) or not 0 < value <= tok.size:
        raise UserError(f"{tok.folder / MERGE_REPORT}: base_vocab_size {value!r} is not between 1 and {tok.size}")
    return value


def base_processor(tok: TokenizerInfo, base_size: int, for_pieces: bool = True):
    """SentencePiece processor of the base model, by default set up to spell one piece's surface as-is.

    For pieces the dummy prefix is switched off and whitespace kept: a piece starting with '▁' is fed
    with a leading space (which the normalizer turns into '▁', as the base saw it after a space or
    at the start of text); a piece without it is spelled as the base spelled it mid-word.
    ``for_pieces=False`` gives the base tokenizer as it reads running text.
    """
    import sentencepiece as spm

    from .spm_proto import clone

    base = clone(tok.sp_proto)
    del base.pieces[base_size:]
    if for_pieces:
        base.normalizer_spec.add_dummy_prefix = False
        base.normalizer_spec.remove_extra_whitespaces = False
    return spm.SentencePieceProcessor(model_proto=base.SerializeToString())


@dataclass
class RowPlan:
    """How each row from ``old_rows`` to ``new_rows - 1`` is initialised."""

    old_rows: int
    new_rows: int
    method: str
    rules: list[str]  # one per new row
    sources: dict[int, list[int]]  # new id -> base ids whose rows are averaged
    first: int = -1  # first row the plan sets (default old_rows; lower: spare rows are re-initialised)
    mean_excludes: list[int] = field(default_factory=list)  # rows left out of the fallback mean

    @property
    def start(self) -> int:
        return self.old_rows if self.first < 0 else self.first

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rule in self.rules:
            out[rule] = out.get(rule, 0) + 1
        return out


def _speller(tok: TokenizerInfo, base_size: int, method: str):
    """id -> base ids of its surface (None: the base cannot spell it)."""
    from .bbpe_resize import bbpe_speller

    if is_bbpe_extension(tok.merge_report):
        return bbpe_speller(tok.folder, base_size)
    if tok.sp_proto is None:
        raise UserError(
            f"--init {method} needs the merged {SP_FILE} in {tok.folder} to spell new pieces "
            "with the base tokenizer; use --init mean or random for tokenizer.json-only folders"
        )
    processor = base_processor(tok, base_size)
    unk = processor.unk_id()

    def spell(i: int) -> list[int] | None:
        ids = processor.encode(tok.pieces[i].replace("\u2581", " "), out_type=int)
        return ids if ids and unk not in ids else None
    return spell


def plan_rows(tok: TokenizerInfo, old_rows: int, new_rows: int, method: str, base_size: int,
              first: int | None = None) -> RowPlan:
    """Decide the rule of every new row (and the base ids for sub-token means).

    ``first`` (below ``old_rows``): spare rows from there on are planned like new ones."""
    if method not in METHODS:
        raise UserError(f"--init {method!r}: expected one of {', '.join(METHODS)}")
    spell = _speller(tok, base_size, method) if method in SPELLED_METHODS else None
    rules: list[str] = []
    sources: dict[int, list[int]] = {}
    start = old_rows if first is None else first
    for i in range(start, new_rows):
        if i >= tok.size:
            rules.append(RULE_PADDING)
        elif i in tok.special_ids or tok.pieces[i] is None:
            rules.append(RULE_SPECIAL)
        elif method == "mean":
            rules.append(RULE_MEAN)
        elif method == "random":
            rules.append(RULE_RANDOM)
        else:
            ids = spell(i)
            if not ids:
                rules.append(RULE_UNDECOMPOSABLE)
            else:
                rules.append(RULE_SUBTOKEN)
                sources[i] = ids

    # Byte-level BPE bases: special tokens' rows (Llama-3's reserved ones were never trained) stay out
    # of the fallback mean. SentencePiece merges keep the mean of all rows, as before.
    excludes = sorted(i for i in tok.special_ids if i < start) if is_bbpe_extension(tok.merge_report) else []
    return RowPlan(old_rows, new_rows, method, rules, sources, start, excludes)


def mean_of_rows(old, chunk: int = 4096, upto: int | None = None, excludes: list[int] = ()):
    """Mean of rows ``[:upto]`` less ``excludes`` in float32, accumulated in float64 chunk by chunk
    (no full fp32 copy)."""
    import torch

    upto = old.shape[0] if upto is None else upto
    acc = torch.zeros(old.shape[1:], dtype=torch.float64)
    for start in range(0, upto, chunk):
        acc += old[start:min(start + chunk, upto)].to(torch.float64).sum(dim=0)
    if excludes:
        acc -= old[list(excludes)].to(torch.float64).sum(dim=0)
    return (acc / (upto - len(excludes))).to(torch.float32)


def grow_rows(old, plan: RowPlan, std: float, generator=None):
    """A new tensor: ``old`` copied bit for bit into the first rows, new rows per ``plan``.

    Works for matrices (rows × hidden) and vectors (an output bias); computes in float32 on the
    few rows involved and stores in ``old``'s dtype.
    """
    import torch

    if old.shape[0] != plan.old_rows:
        raise ValueError(f"tensor has {old.shape[0]} rows, plan expects {plan.old_rows}")
    new = torch.empty((plan.new_rows, *old.shape[1:]), dtype=old.dtype)
    new[: plan.old_rows].copy_(old)
    if plan.new_rows == plan.start:
        return new
    mean = mean_of_rows(old, upto=plan.start, excludes=plan.mean_excludes).to(old.dtype)
    for offset, rule in enumerate(plan.rules):
        i = plan.start + offset
        if rule == RULE_SUBTOKEN:
            new[i] = old[plan.sources[i]].to(torch.float32).mean(dim=0).to(old.dtype)
        elif rule == RULE_RANDOM:
            row = torch.empty(old.shape[1:], dtype=torch.float32)
            new[i] = row.normal_(0.0, std, generator=generator).to(old.dtype)
        else:
            new[i] = mean
    return new


def special_token_ids(tok: TokenizerInfo) -> dict[str, int]:
    """``{"pad_token_id": 49953, ...}`` for the special tokens tokenizer_config.json names (and the
    tokenizer has): what the model's config.json must say, or generate() and servers miss them."""
    path = tok.folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    ids = {piece: i for i, piece in enumerate(tok.pieces) if piece is not None}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value in ids:
            out[f"{key}_id"] = ids[value]
    return out
