"""Load a byte-level BPE base (Llama-3, Qwen, Mistral Tekken) into one representation.

Three formats are accepted (``load_bbpe_base``):

- ``tiktoken``: a rank file of ``base64(token) rank`` lines (Llama-3's original tokenizer.model,
  Qwen's qwen.tiktoken). Rank = id; a token is merged from any two tokens that concatenate to it,
  lowest rank first. Pattern and special tokens come from :mod:`vocab.bbpe_profiles`.
- ``tekken``: Mistral's tekken.json; ids are rank + ``default_num_special_tokens``.
- ``hf``: a Hugging Face tokenizer.json (or a folder holding one) whose model is BPE with a
  ByteLevel pre-tokenizer; its merges list is the priority order.

Every base must hold all 256 single bytes as tokens: that is byte-level BPE's byte fallback, and
without it some text has no tokenization. Never imports torch.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhllama.errors import UserError
from zhllama.files import sha256_file
from zhllama.tokenizer_files import looks_like_tiktoken

from .bbpe_profiles import KNOWN_RANK_FILES, tekken_specials


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's ByteLevel alphabet: printable bytes map to themselves, the rest to U+0100.."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def to_bytelevel(data: bytes) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in data)


def from_bytelevel(text: str) -> bytes:
    return bytes(CHAR_TO_BYTE[c] for c in text)


@dataclass
class ByteBPEBase:
    """A byte-level BPE base, whatever file it came from."""

    fmt: str  # "tiktoken" | "tekken" | "hf"
    path: Path  # the file read
    folder: Path | None  # the HF folder, when --base was one
    sha256: str
    tokens: dict[int, bytes]  # id -> bytes of every mergeable token
    specials: dict[int, str]  # id -> content of special / added tokens
    pattern: str | None  # the pre-tokenizer regex (None: the HF file's own pre-tokenizer)
    pattern_source: str
    profile: str = "custom"
    bos: str | None = None
    eos: str | None = None
    id_offset: int = 0  # tekken: id = rank + offset
    hf_json: dict[str, Any] | None = None  # the tokenizer.json as read (hf)
    tekken_json: dict[str, Any] | None = None  # the tekken.json as read, less its unused vocab
    merges: list[tuple[bytes, bytes]] | None = None  # explicit merges (hf); None: rank rule
    notes: list[str] = field(default_factory=list)

    @property
    def next_id(self) -> int:
        """First id the base does not use: new tokens start here (after every special token)."""
        return max(max(self.tokens), max(self.specials, default=-1)) + 1

    def record(self, given: str | Path) -> dict[str, Any]:
        return {"path": str(given), "file": str(self.path), "sha256": self.sha256, "format": self.fmt,
                "profile": self.profile, "tokens": len(self.tokens), "special_tokens": len(self.specials),
                "next_id": self.next_id, "pattern": self.pattern, "pattern_source": self.pattern_source}


def _check_bytes(path: Path, tokens: dict[int, bytes]) -> None:
    singles = {t for t in tokens.values() if len(t) == 1}
    if len(singles) < 256:
        missing = sorted(set(range(256)) - {t[0] for t in singles})
        raise UserError(f"--base {path}: not a byte-level BPE base with byte fallback: {len(missing)} of the 256 "
                        f"single bytes are not tokens (e.g. {[hex(b) for b in missing[:5]]}), so some text could "
                        "not be tokenized")


def read_rank_lines(path: Path, data: bytes) -> dict[int, bytes]:
    """Parse ``base64 rank`` lines; every malformed line is an error naming it."""
    tokens: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 'base64(token) rank'")
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error) as exc:
            raise UserError(f"--base {path}: line {n} is not a tiktoken rank line ({exc}): {line[:60]!r}") from None
        if rank in tokens or token in seen or not token:
            raise UserError(f"--base {path}: line {n}: duplicate or empty token/rank {rank} (a corrupt rank file)")
        tokens[rank], seen[token] = token, rank
    if not tokens:
        raise UserError(f"--base {path}: empty rank file")
    return tokens


def _load_tiktoken(path: Path, pattern: str | None) -> ByteBPEBase:
    digest = sha256_file(path)
    tokens = read_rank_lines(path, path.read_bytes())
    profile = KNOWN_RANK_FILES.get(digest)
    if profile is None and not pattern:
        raise UserError(f"--base {path}: a tiktoken rank file without a split pattern. Rank files do not store "
                        "their pre-tokenizer regex; this one (sha256 {}) is not one we know, so pass it with "
                        "--pattern REGEX".format(digest[:12]))
    base = ByteBPEBase("tiktoken", path, None, digest, tokens, {}, pattern or profile.pattern,
                       "--pattern" if pattern else profile.pattern_source)
    if profile is not None:
        base.profile, base.bos, base.eos = profile.name, profile.bos, profile.eos
        base.specials = {profile.first_special_id + i: s for i, s in enumerate(profile.specials)}
    _check_bytes(path, tokens)
    return base


def _load_tekken(path: Path, raw: dict[str, Any]) -> ByteBPEBase:
    config = raw.get("config") or {}
    if not config.get("pattern"):
        raise UserError(f"--base {path}: tekken file without config.pattern (its pre-tokenizer regex)")
    offset = int(config.get("default_num_special_tokens", 0))
    inner = int(config.get("default_vocab_size", len(raw["vocab"]) + offset)) - offset
    tokens: dict[int, bytes] = {}
    for entry in raw["vocab"][:inner]:
        try:
            tokens[int(entry["rank"]) + offset] = base64.b64decode(entry["token_bytes"], validate=True)
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise UserError(f"--base {path}: vocab entry {entry!r:.80} is not a tekken rank entry ({exc})") from None
    if sorted(tokens) != list(range(offset, offset + len(tokens))):
        raise UserError(f"--base {path}: tekken ranks are not 0..{inner - 1} in order (a corrupt file)")
    specials = dict(enumerate(tekken_specials(config, raw.get("special_tokens"))))
    kept = dict(raw, vocab=raw["vocab"][:inner])  # the unused tail is not part of the tokenizer
    base = ByteBPEBase("tekken", path, None, sha256_file(path), tokens, specials, config["pattern"],
                       f"{path.name} config.pattern", profile="tekken", bos="<s>", eos="</s>", id_offset=offset,
                       tekken_json=kept)
    _check_bytes(path, tokens)
    return base


def _has_bytelevel(pre: dict[str, Any] | None) -> bool:
    if not pre:
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_has_bytelevel(p) for p in pre.get("pretokenizers", []))


def _split_pattern(pre: dict[str, Any] | None) -> str | None:
    if not pre:
        return None
    if pre.get("type") == "Split":
        return (pre.get("pattern") or {}).get("Regex")
    for p in pre.get("pretokenizers", []):
        found = _split_pattern(p)
        if found:
            return found
    return None


def _load_hf(path: Path, folder: Path | None, raw: dict[str, Any]) -> ByteBPEBase:
    model = raw.get("model") or {}
    kind = model.get("type")
    if kind != "BPE":
        raise UserError(f"--base {path}: the tokenizer.json model is {kind or 'missing'}, expected BPE with a "
                        "ByteLevel pre-tokenizer (Llama-3, Qwen, Mistral Nemo); WordPiece/Unigram/WordLevel "
                        "models cannot be extended by appending merges")
    if not _has_bytelevel(raw.get("pre_tokenizer")):
        raise UserError(f"--base {path}: BPE without a ByteLevel pre-tokenizer (a SentencePiece-style BPE?); "
                        "give the SentencePiece tokenizer.model for such bases")
    try:
        tokens = {int(i): from_bytelevel(t) for t, i in model["vocab"].items()}
    except KeyError as exc:
        raise UserError(f"--base {path}: vocab token holds {exc} outside the ByteLevel alphabet "
                        "(not a byte-level BPE)") from None
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    specials = {int(t["id"]): t["content"] for t in raw.get("added_tokens", [])}
    for i in specials:
        tokens.pop(i, None)  # an added token is matched before BPE: never part of a merge
    base = ByteBPEBase("hf", path, folder, sha256_file(path), tokens, specials, _split_pattern(raw.get("pre_tokenizer")),
                       f"{path.name} pre_tokenizer", hf_json=raw,
                       merges=[(from_bytelevel(a), from_bytelevel(b)) for a, b in merges])
    _check_bytes(path, tokens)
    return base


def load_bbpe_base(given: str | Path, pattern: str | None = None) -> ByteBPEBase:
    """A byte-level BPE base from a tiktoken file, a tekken.json, a tokenizer.json or an HF folder."""
    path = Path(given)
    folder = None
    if path.is_dir():  # an HF folder's tokenizer.json, else an original folder's tiktoken tokenizer.model
        folder = path
        path = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "tokenizer.model"
        if not path.is_file():
            raise UserError(f"--base {folder}: the folder has neither tokenizer.json nor tokenizer.model")
    if not path.is_file():
        raise UserError(f"--base {path}: no such file or folder")
    if looks_like_tiktoken(path):
        return _load_tiktoken(path, pattern)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--base {path}: neither a tiktoken rank file nor valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"--base {path}: JSON that is not a tokenizer (expected an object)")
    if "vocab" in raw and "config" in raw and isinstance(raw["vocab"], list):
        return _load_tekken(path, raw)
    if "model" in raw:
        return _load_hf(path, folder, raw)
    raise UserError(f"--base {path}: JSON that is neither a tokenizer.json (no 'model') nor a tekken.json")


def is_bbpe_base(given: str | Path) -> bool:
    """Whether ``given`` should go the byte-level BPE way (else: SentencePiece)."""
    path = Path(given)
    if path.is_dir():
        return not (path / "tokenizer.model").is_file() and (path / "tokenizer.json").is_file() or (
            (path / "tokenizer.model").is_file() and looks_like_tiktoken(path / "tokenizer.model"))
    if not path.is_file():
        return False
    if looks_like_tiktoken(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(64).lstrip().startswith(b"{")
