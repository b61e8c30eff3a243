"""Which files of a folder make a tokenizer, and a fingerprint of what decides its ids.

    from zhllama.tokenizer_files import tokenizer_fingerprint, TOKENIZER_FILES
    tokenizer_fingerprint("runs/zh_tokenizer")   # sha256 hex; equal folders tokenize text equally

Shared by every phase: prepare records it in its shards, the engine compares it with the model's
tokenizer before training, SFT keys its cache on it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError
from .files import sha256_file, sha256_json

# Files that decide how text becomes ids (a model folder holds others: weights, config).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model.v1")
# Copied with the tokenizer files: transformers 5 reads the chat template from this file.
_COPIED_WITH = ("chat_template.jinja", "chat_template.json")
# Where a model's vocabulary came from (vocab resize, vocab merge): every stage passes them on, next to
# the weights; a byte-level BPE extension's GGUF conversion reads the base's size in merge_report.json.
VOCAB_REPORTS = ("resize_report.json", "merge_report.json")
_ID_SETTINGS = ("add_bos_token", "add_eos_token", "bos_token", "eos_token", "legacy", "add_prefix_space",
                "tokenizer_class")


def tokenizer_fingerprint(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 over what decides the ids of a tokenizer folder (not how its files are formatted).

    ``tokenizer.json`` is hashed as canonical JSON (so a re-save that only changes whitespace or
    key order keeps the fingerprint); without it, the bytes of the SentencePiece/vocab files.
    The special-token settings of ``tokenizer_config.json`` that change ids (add_bos_token, the
    BOS/EOS strings, legacy, ...) are included; chat templates and max lengths are not.
    """
    folder = Path(tokenizer_dir)
    parts: dict[str, Any] = {}
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        parts["tokenizer.json"] = sha256_json(_load_json(tok_json))
    else:
        for name in TOKENIZER_FILES:
            path = folder / name
            if path.is_file() and name not in ("tokenizer_config.json", "special_tokens_map.json"):
                parts[name] = sha256_file(path)
    if not parts:
        raise UserError(f"{folder}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES[:3])})")
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins, as in HF
        path = folder / name
        if path.is_file():
            raw = _load_json(path)
            config.update({k: _token_text(raw[k]) for k in _ID_SETTINGS if k in raw})
    parts["settings"] = config
    return sha256_json(parts)


def read_sp_proto(path: str | os.PathLike) -> Any:
    """The parsed SentencePiece model (a ModelProto) at ``path``; one UserError naming the file if it is not one."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise UserError(f"{path}: not a SentencePiece model ({exc})") from None
    return proto


def tokenizer_json_pieces(path: str | os.PathLike) -> tuple[dict[int, str], list[dict]]:
    """({id: surface} of the model's vocab, the added_tokens entries) of a tokenizer.json."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    vocab = (data.get("model") or {}).get("vocab") or {}
    items = vocab.items() if isinstance(vocab, dict) else ((p[0], i) for i, p in enumerate(vocab))
    return {int(i): text for text, i in items}, list(data.get("added_tokens") or [])


def looks_like_tiktoken(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a tiktoken rank file (``base64 rank`` lines): Llama-3 ships one
    named tokenizer.model, the name SentencePiece models have."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    lines = head.splitlines()[:8]
    return bool(lines) and all(len(x.split()) == 2 and x.split()[1].isdigit() for x in lines)


BBPE_FORMATS = ("tiktoken", "tekken", "hf")  # the base formats of `vocab merge`'s byte-level BPE path


def is_bbpe_extension(merge_report: dict) -> bool:
    """Whether a merge_report.json describes a byte-level BPE base extended by `vocab merge`."""
    base = merge_report.get("base")
    return isinstance(base, dict) and base.get("format") in BBPE_FORMATS


def base_tokenizer_json(text: str, base_size: int) -> str:
    """An extended byte-level BPE tokenizer.json (``vocab merge`` on Llama-3, Qwen, Tekken) cut back to
    its base: the ids below ``base_size`` and the special tokens, and the merges whose result is still
    a token. New tokens and their merges come after every base one, so this tokenizes as the base did."""
    raw = json.loads(text)
    special = {t["content"] for t in raw.get("added_tokens", [])}
    model = raw["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < base_size or t in special}
    joined = ("".join(m.split(" ", 1)) if isinstance(m, str) else "".join(m) for m in model["merges"])
    model["merges"] = [m for m, result in zip(model["merges"], joined) if result in model["vocab"]]
    return json.dumps(raw, ensure_ascii=False)


def _token_text(value: Any) -> Any:
    return value.get("content") if isinstance(value, dict) else value


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None


def copy_tokenizer_files(source_dir: str | os.PathLike, dest_dir: str | os.PathLike) -> list[str]:
    """Copy a tokenizer folder's files byte for byte into ``dest_dir``; the names copied.

    Every stage's output carries the tokenizer the run started from exactly: re-saving it with
    transformers 5 drops add_bos_token/add_eos_token/legacy and special_tokens_map.json, which
    other runtimes (llama.cpp's converter, transformers 4) read.
    """
    source, dest = Path(source_dir), Path(dest_dir)
    names = [n for n in TOKENIZER_FILES + _COPIED_WITH if (source / n).is_file()]
    if not any(n in names for n in TOKENIZER_FILES):
        raise UserError(f"{source}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES[:3])})")
    for name in names:
        shutil.copyfile(source / name, dest / name)
    return names


def copy_vocab_reports(sources: Iterable[str | os.PathLike], dest_dir: str | os.PathLike) -> None:
    """Copy each of VOCAB_REPORTS from the first of ``sources`` that has it: the vocab's provenance
    travels with the model to the next stage (GGUF conversion of a BPE extension reads merge_report.json)."""
    for name in VOCAB_REPORTS:
        found = next((Path(folder) / name for folder in sources if (Path(folder) / name).is_file()), None)
        if found is not None:
            shutil.copy2(found, Path(dest_dir) / name)
