"""How well a tokenizer handles Chinese text, optionally against a base tokenizer.

    python -m vocab stats --tokenizer runs/zh_vocab/merged --base ../shared/data/tokenizers/llama2c FILE...

Every number comes from the sentencepiece library (the reference for ids; a Hugging Face
folder is read through its ``tokenizer.model``). Definitions, per file (one text per line,
empty lines skipped, no BOS/EOS counted):

- ``tokens_per_char``: tokens / characters.
- ``tokens_per_cjk_char``: tokens that cover at least one Han character / Han characters. A
  byte-fallback token belongs to the character its bytes encode.
- ``byte_fallback_share``: byte tokens (``<0xNN>``) / tokens.
- ``vocab_used_share``: distinct ids used in the file / vocabulary size.
- ``non_cjk_lines_changed`` (with a base): lines without a Han character whose ids differ from
  the base's ids.
- ``jieba_cross_share`` (with jieba): tokens spanning a jieba word boundary / tokens (only
  boundaries between two non-space characters count).

And per tokenizer, with a base: ``added_pieces`` (normal pieces whose string the base lacks) and
``unreachable_added`` (those that encoding their own text does not give back as one piece;
checked without the dummy "▁" prefix, i.e. as they would occur inside unspaced text).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from zhllama.errors import UserError

from corpora.cleaning import cjk_count, is_cjk
from .spm_proto import clone


@dataclasses.dataclass
class Tokenizer:
    """A sentencepiece model as stats needs it."""

    path: Path  # the .model file actually read
    sp: spm.SentencePieceProcessor
    proto: pb.ModelProto

    @property
    def size(self) -> int:
        return self.sp.get_piece_size()


def load_tokenizer(path: str | Path, role: str = "tokenizer") -> Tokenizer:
    """A SentencePiece ``.model`` file or an HF folder holding ``tokenizer.model``."""
    given = Path(path)
    model = given / "tokenizer.model" if given.is_dir() else given
    if given.is_dir() and not model.is_file():
        raise UserError(f"--{role} {given}: the folder has no tokenizer.model (only SentencePiece tokenizers "
                        "are supported)")
    if not model.is_file():
        raise UserError(f"--{role} {given}: no such file or folder")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(model.read_bytes())
        sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except Exception as exc:  # protobuf DecodeError / sentencepiece RuntimeError: not a model
        raise UserError(f"--{role} {model}: not a SentencePiece model ({type(exc).__name__})") from None
    if not proto.pieces:
        raise UserError(f"--{role} {model}: not a SentencePiece model (no pieces)")
    return Tokenizer(model, sp, proto)


def added_pieces(tok: Tokenizer, base: Tokenizer) -> list[int]:
    """Ids of normal pieces of ``tok`` whose strings ``base`` does not have."""
    have = {p.piece for p in base.proto.pieces}
    normal = pb.ModelProto.SentencePiece.NORMAL
    return [i for i, p in enumerate(tok.proto.pieces) if p.type == normal and p.piece not in have]


def unreachable(tok: Tokenizer, ids: Iterable[int]) -> list[str]:
    """Pieces that encoding their own text (no dummy prefix) does not return as that single piece."""
    proto = clone(tok.proto)
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False  # a piece's own spaces are part of it
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    out = []
    for i in ids:
        piece = tok.proto.pieces[i].piece
        if sp.encode(piece.replace("\u2581", " ")) != [i]:
            out.append(piece)
    return out


def _char_index(text: str) -> list[int]:
    """Map every UTF-8 byte offset of ``text`` (and its end) to a character index."""
    if text.isascii():
        return list(range(len(text) + 1))
    index: list[int] = []
    for i, ch in enumerate(text):
        index.extend([i] * len(ch.encode("utf-8", "surrogatepass")))
    index.append(len(text))
    return index


def token_spans(tok: Tokenizer, text: str) -> list[tuple[int, int, int]]:
    """(id, first char, end char) per token; a byte token spans the character its bytes encode."""
    encoded = tok.sp.encode(text, return_type="proto")
    index = _char_index(text)
    spans = []
    for p in encoded.pieces:
        start, end = index[p.begin], index[p.end]
        if start == end and tok.sp.is_byte(p.id) and start < len(text):
            end = start + 1
        spans.append((p.id, start, end))
    return spans


def jieba_boundaries() -> Callable[[str], set[int]]:
    import jieba

    jieba.setLogLevel(logging.WARNING)

    def boundaries(text: str) -> set[int]:
        # Only boundaries between two non-space characters: "▁the" spanning jieba's " " | "the"
        # is how every LLaMA word token looks, not a crossing.
        cuts, pos = set(), 0
        for word in jieba.lcut(text, HMM=True):
            pos += len(word)
            if pos < len(text) and not text[pos - 1].isspace() and not text[pos].isspace():
                cuts.add(pos)
        return cuts

    return boundaries


def text_stats(tok: Tokenizer, lines: Sequence[str], base: Tokenizer | None = None,
               with_jieba: bool = False) -> dict[str, Any]:
    """The per-file numbers of the module doc for a list of lines."""
    cut = jieba_boundaries() if with_jieba else None
    chars = cjk = tokens = cjk_tokens = byte_tokens = crossing = 0
    non_cjk_lines = changed = base_tokens = 0
    used: set[int] = set()
    examples: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        spans = token_spans(tok, line)
        ids = [i for i, _, _ in spans]
        chars += len(line)
        n_cjk = cjk_count(line)
        cjk += n_cjk
        tokens += len(ids)
        used.update(ids)
        byte_tokens += sum(tok.sp.is_byte(i) for i in ids)
        if n_cjk:
            cjk_tokens += sum(any(is_cjk(c) for c in line[s:e]) for _, s, e in spans)
        if cut is not None:
            cuts = cut(line)
            crossing += sum(any(b in cuts for b in range(s + 1, e)) for _, s, e in spans)
        if base is not None:
            base_ids = base.sp.encode(line)
            base_tokens += len(base_ids)
            if not n_cjk:
                non_cjk_lines += 1
                if base_ids != ids:
                    changed += 1
                    if len(examples) < 3:
                        examples.append(line[:120])
    out: dict[str, Any] = {
        "lines": sum(1 for line in lines if line.strip()),
        "characters": chars,
        "cjk_characters": cjk,
        "tokens": tokens,
        "tokens_per_char": _ratio(tokens, chars),
        "tokens_per_cjk_char": _ratio(cjk_tokens, cjk),
        "byte_fallback_share": _ratio(byte_tokens, tokens),
        "vocab_used_share": _ratio(len(used), tok.size),
    }
    if base is not None:
        out.update({"base_tokens": base_tokens, "base_tokens_per_char": _ratio(base_tokens, chars),
                    "non_cjk_lines": non_cjk_lines, "non_cjk_lines_changed": changed,
                    "non_cjk_changed_examples": examples})
    if cut is not None:
        out["jieba_cross_share"] = _ratio(crossing, tokens)
    return out


def tokenizer_stats(tok: Tokenizer, base: Tokenizer | None) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(tok.path), "vocab_size": tok.size,
                           "model_type": pb.TrainerSpec.ModelType.Name(tok.proto.trainer_spec.model_type)}
    if base is not None:
        ids = added_pieces(tok, base)
        bad = unreachable(tok, ids)
        out.update({"base": str(base.path), "base_vocab_size": base.size, "added_pieces": len(ids),
                    "unreachable_added": len(bad), "unreachable_examples": bad[:10]})
    return out


def read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: " + ("is a folder, expected a text file" if path.is_dir() else "no such file"))
    lines = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                lines.append(raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{n}: not valid UTF-8 ({exc.reason})") from None
    return lines


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None
