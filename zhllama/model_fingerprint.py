"""A content fingerprint of a Hugging Face model folder: what an adapter was trained on top of.

sha256 over config.json's settings (parsed, so formatting does not count) and every weight
file's sha256. A LoRA run records its base's fingerprint; ``sft export`` compares it with
``--base`` so an adapter is never merged into another model of the same shape.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .files import sha256_file, sha256_json

# Keys transformers rewrites on every save; they do not change the weights' meaning.
_VOLATILE = ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype", "use_cache")
_WEIGHTS = ("*.safetensors", "*.bin")


def model_fingerprint(folder: str | Path) -> str:
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: cannot read config.json ({exc})") from None
    config = {k: v for k, v in config.items() if k not in _VOLATILE}
    weights = sorted({p for pattern in _WEIGHTS for p in folder.glob(pattern) if p.is_file()})
    return sha256_json({"config": config, "weights": {p.name: sha256_file(p) for p in weights}})


def config_differences(a: str | Path, b: str | Path, limit: int = 5) -> list[str]:
    """'key: x vs y' for config.json settings that differ between two model folders (for messages)."""
    try:
        ca = json.loads((Path(a) / "config.json").read_text(encoding="utf-8"))
        cb = json.loads((Path(b) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    keys = sorted(k for k in set(ca) | set(cb) if k not in _VOLATILE and ca.get(k) != cb.get(k))
    return [f"{k}: {ca.get(k)!r} vs {cb.get(k)!r}" for k in keys[:limit]]
