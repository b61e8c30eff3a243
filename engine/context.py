"""A longer context than the base model's: RoPE scaling from the run's settings, and the length check.

``model.rope_scaling`` (e.g. ``{rope_type: linear, factor: 4}`` — position interpolation, as
Chinese-LLaMA-Alpaca-2's 16K models; or ``yarn``, as its 64K ones; or a larger base frequency,
``{rope_theta: 1000000}`` with ``max_position_embeddings``, as Code Llama and Llama 3) is merged into the model's config
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
from zhllama.rope import describe_scaling, positions, scaling_in, text_config


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


def describe(model_path: str, rope_scaling: dict[str, Any], max_positions: int | None) -> str:
    """A log line, or "" when the run keeps the model's positions."""
    if not rope_scaling and max_positions is None:
        return ""
    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    text = text_config(config)
    before = text.get("max_position_embeddings")
    old_base = (text.get("rope_parameters") or {}).get("rope_theta", text.get("rope_theta"))
    kind = describe_scaling(rope_scaling, old_base) or "RoPE as the model has it"
    return f"context: {kind}, positions {before} -> {positions(config, rope_scaling, max_positions)}"
