"""A longer context than the base model's: RoPE scaling from the run's settings, and the length check.

``model.rope_scaling`` (e.g. ``{rope_type: linear, factor: 4}`` — position interpolation, as
Chinese-LLaMA-Alpaca-2's 16K models; or ``yarn``, as its 64K ones) is merged into the model's config
when the model is built, so training sees the scaled positions, and it is saved with the result
(``final/config.json``, and folders made by export-checkpoint), so every later stage and runtime
reads the same positions. ``max_position_embeddings`` becomes the longer length (default: the
model's times the factor). Training sequences longer than the positions the model covers are
refused: a model trained on 4K positions gives no error but poor results on 16K blocks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zhllama.errors import UserError

# Scalings to train with (dynamic NTK is an inference-time scaling; llama3 and longrope come with the
# models that were pretrained with them, and are kept as their configs have them).
SCALING_TYPES = ("linear", "yarn")
NEEDS_ORIGINAL = ("yarn",)  # computes from the length trained before, not the new max_position_embeddings


def validate(rope_scaling: dict[str, Any], max_positions: int | None) -> list[str]:
    problems = []
    if rope_scaling:
        kind, factor = rope_scaling.get("rope_type"), rope_scaling.get("factor")
        if kind not in SCALING_TYPES:
            problems.append(f"rope_scaling.rope_type: one of {', '.join(SCALING_TYPES)}, got {kind!r}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
            problems.append(f"rope_scaling.factor: a number > 1 (how many times longer), got {factor!r}")
    if max_positions is not None and max_positions < 1:
        problems.append(f"max_position_embeddings: must be >= 1, got {max_positions}")
    return problems


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config.json dict that holds the language model's settings (multimodal configs nest it)."""
    return config.get("text_config", config) if "max_position_embeddings" not in config else config


def scaling_in(config: dict[str, Any]) -> dict[str, Any] | None:
    """The RoPE scaling a config.json holds (transformers 5 ``rope_parameters``, 4 ``rope_scaling``), or None."""
    config = text_config(config)
    for key in ("rope_parameters", "rope_scaling"):
        params = config.get(key)
        if isinstance(params, dict) and (params.get("rope_type") or params.get("type") or "default") != "default":
            return params
    return None


def positions(model_config: dict[str, Any], rope_scaling: dict[str, Any], max_positions: int | None) -> int | None:
    """The positions this run's model covers: the override, else the model's (times the new scaling's factor)."""
    if max_positions is not None:
        return max_positions
    limit = text_config(model_config).get("max_position_embeddings")
    if not isinstance(limit, int):
        return None
    return int(limit * float(rope_scaling["factor"])) if rope_scaling else limit


def check_sequence_length(model_path: str, rope_scaling: dict[str, Any], max_positions: int | None,
                          seq_len: int | None) -> None:
    """Refuse sequences longer than the positions the model (with this run's scaling) was made for. A model
    whose own config already scales RoPE is trusted with any length, as its config may not say how far."""
    if not seq_len:
        return
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # check_model_folder reports an unreadable folder
    limit = positions(config, rope_scaling, max_positions)
    if limit is None or seq_len <= limit or (scaling_in(config) and not rope_scaling and max_positions is None):
        return
    raise UserError(
        f"the training sequences are {seq_len} tokens but {model_path} (with this run's settings) covers at most "
        f"{limit} positions (max_position_embeddings); prepare the data with --block-size <= {limit} (or "
        f"data.max_seq_length for SFT), or extend the context: model.rope_scaling={{rope_type: linear, factor: "
        f"{-(-seq_len // (text_config(config).get('max_position_embeddings') or seq_len))}}}")


def scaled_config(model_path: str, rope_scaling: dict[str, Any], max_positions: int | None):
    """The model's AutoConfig with this run's scaling and length merged in (unchanged without them)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    if not rope_scaling and max_positions is None:
        return config
    text = getattr(config, "text_config", None) or config
    original = text.max_position_embeddings
    if rope_scaling:
        params = dict(rope_scaling)
        if params["rope_type"] in NEEDS_ORIGINAL:
            params.setdefault("original_max_position_embeddings", original)
        if hasattr(text, "rope_parameters"):  # transformers 5
            text.rope_parameters = {**(text.rope_parameters or {}), **params}
        else:
            text.rope_scaling = params
    text.max_position_embeddings = positions({"max_position_embeddings": original}, rope_scaling, max_positions)
    return config


def describe(model_path: str, rope_scaling: dict[str, Any], max_positions: int | None) -> str:
    """A log line, or "" when the run keeps the model's positions."""
    if not rope_scaling and max_positions is None:
        return ""
    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    before = text_config(config).get("max_position_embeddings")
    kind = f"RoPE {rope_scaling['rope_type']} x{rope_scaling['factor']}" if rope_scaling else "RoPE as the model has it"
    return f"context: {kind}, positions {before} -> {positions(config, rope_scaling, max_positions)}"
