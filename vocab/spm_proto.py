"""Read, check and write SentencePiece ``ModelProto`` files (no torch, no transformers).

The merge edits the protobuf directly because the sentencepiece Python API cannot append pieces.
Loading goes through :func:`load_model_proto`, which turns every way a file can be wrong (missing,
a folder, a tiktoken rank file, a tokenizer.json, random bytes) into one clear ``UserError``.
"""
from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb

from zhllama.errors import UserError

# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}
WHITESPACE = "\u2581"  # "▁", SentencePiece's visible space


@dataclass(frozen=True)
class LoadedModel:
    """A parsed SentencePiece model and where it came from."""

    proto: pb.ModelProto
    path: Path  # the .model file actually read
    folder: Path | None  # the HF folder it was found in, when --base was a folder

    @property
    def model_type(self) -> str:
        return MODEL_TYPES.get(self.proto.trainer_spec.model_type, str(self.proto.trainer_spec.model_type))


def _sniff_not_sentencepiece(data: bytes) -> str | None:
    """Name the format of a file that is not a SentencePiece model, when we can recognise it."""
    head = data[:4096].lstrip()
    if head.startswith(b"{"):
        return "a JSON file (a Hugging Face tokenizer.json?), not a SentencePiece model"
    lines = head.splitlines()[:8]
    if lines and all(len(line.split()) == 2 and line.split()[1].isdigit() for line in lines):
        return ("a tiktoken BPE rank file (lines of 'base64(token) rank', e.g. Llama 3), "
                "not a SentencePiece model; a byte-level BPE base (Llama-3, Qwen) is extended with "
                "--base FILE --manifest M --new-tokens N, never used as --add")
    return None


def load_model_proto(path: str | Path) -> pb.ModelProto:
    """Parse a SentencePiece ``.model`` file or raise a UserError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a SentencePiece .model file")
    data = path.read_bytes()
    what = _sniff_not_sentencepiece(data)
    if what:
        raise UserError(f"{path}: {what}")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError depending on backend
        raise UserError(f"{path}: not a SentencePiece model (protobuf parse failed: {exc})") from None
    if len(proto.pieces) == 0 or not proto.HasField("trainer_spec"):
        raise UserError(f"{path}: not a SentencePiece model (no pieces / trainer_spec in the file)")
    return proto


def resolve_sentencepiece(path: str | Path, role: str) -> LoadedModel:
    """Accept a ``.model`` file or an HF tokenizer folder holding ``tokenizer.model``."""
    path = Path(path)
    if path.is_dir():
        model_file = path / "tokenizer.model"
        if not model_file.is_file():
            has_json = (path / "tokenizer.json").is_file()
            hint = (" It has only a tokenizer.json: a byte-level BPE base is extended with --base DIR "
                    "--manifest M --new-tokens N, never used as --add.") if has_json else ""
            raise UserError(f"--{role} {path}: folder has no SentencePiece tokenizer.model.{hint}")
        return LoadedModel(load_model_proto(model_file), model_file, path)
    if not path.exists():
        raise UserError(f"--{role} {path}: no such file or folder")
    try:
        return LoadedModel(load_model_proto(path), path, None)
    except UserError as exc:
        raise UserError(f"--{role} {exc}") from None


def check_base_supported(model: LoadedModel) -> None:
    """The base must be a LLaMA-family BPE model: byte fallback on, nothing normalised away."""
    problems = []
    spec, norm = model.proto.trainer_spec, model.proto.normalizer_spec
    if spec.model_type != 2:
        problems.append(f"model_type is {model.model_type}, expected BPE (LLaMA-family bases are BPE)")
    if not spec.byte_fallback:
        problems.append("byte_fallback is off; without it the Hugging Face Llama tokenizer cannot match ids")
    if norm.name not in ("identity", "") or norm.precompiled_charsmap:
        problems.append(f"normalizer is {norm.name!r}; only 'identity' (as in LLaMA/Mistral) is supported")
    if problems:
        raise UserError(f"--base {model.path}: not a supported base", problems)


def clone(proto: pb.ModelProto) -> pb.ModelProto:
    copy = pb.ModelProto()
    copy.CopyFrom(proto)
    return copy


def new_piece(piece: str, score: float, kind: int = NORMAL) -> pb.ModelProto.SentencePiece:
    item = pb.ModelProto.SentencePiece()
    item.piece, item.score, item.type = piece, score, kind
    return item


def as_float32(value: float) -> float:
    """Round to the float32 the proto will store (scores are ``float`` in the .proto)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def next_float32_below(value: float) -> float:
    """The largest float32 strictly below ``value`` (for unique, strictly decreasing scores)."""
    bits = struct.unpack("<i", struct.pack("<f", as_float32(value)))[0]
    if value > 0:
        bits -= 1
    elif value == 0:
        return -struct.unpack("<f", struct.pack("<i", 1))[0]
    else:
        bits += 1
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def is_han(char: str) -> bool:
    """A CJK (Han) ideograph: the characters a Chinese vocabulary is for."""
    return unicodedata.name(char, "").startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"))
