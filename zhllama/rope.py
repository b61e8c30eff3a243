"""RoPE settings in a model's config: the positions it covers, and a config with another scaling merged in.

    config = scaled_config("outputs/pt-7b", {"rope_type": "linear", "factor": 4}, None)

Shared by training (``model.rope_scaling``, engine/context.py) and evaluation (``python -m evaluation
long-context --rope-scaling``), which reads a model at a scaling it was not saved with.
"""
from __future__ import annotations

from typing import Any

# Scalings to train with (dynamic NTK is an inference-time scaling; llama3 and longrope come with the
# models that were pretrained with them, and are kept as their configs have them).
SCALING_TYPES = ("linear", "yarn")
# A larger base frequency alone (``{rope_theta: 1000000}``: "adjusted base frequency", Code Llama's 10K -> 1M,
# Xiong et al. 2023) is rope_type "default" with a new rope_theta; it may also come with a scaling above.
BASE_ONLY = "default"


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def validate(rope_scaling: dict[str, Any], max_positions: int | None, training: bool = True) -> list[str]:
    """Problems of a scaling (and length) to train with; ``training=False``: to read a model with (any length)."""
    problems = []
    if rope_scaling:
        theta = rope_scaling.get("rope_theta")
        kind = rope_scaling.get("rope_type", BASE_ONLY if theta is not None else None)
        factor = rope_scaling.get("factor")
        if theta is not None and (not _number(theta) or theta <= 0):
            problems.append(f"rope_scaling.rope_theta: a number > 0 (RoPE's base frequency), got {theta!r}")
        if kind == BASE_ONLY and theta is not None:
            if factor is not None:
                problems.append("rope_scaling.factor: not with a new rope_theta alone (add rope_type linear or yarn)")
            if max_positions is None and training:
                problems.append("rope_scaling.rope_theta: a new base alone does not say how long the context "
                                "becomes; set model.max_position_embeddings to the length trained for")
        else:
            if kind not in SCALING_TYPES:
                problems.append(f"rope_scaling.rope_type: one of {', '.join(SCALING_TYPES)}, got {kind!r} (or a new "
                                f"base alone: {{rope_theta: 1000000}})")
            if not _number(factor) or factor <= 1:
                problems.append(f"rope_scaling.factor: a number > 1 (how many times longer), got {factor!r}")
    if max_positions is not None and max_positions < 1:
        problems.append(f"max_position_embeddings: must be >= 1, got {max_positions}")
    return problems


def base_text(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


def describe_scaling(rope_scaling: dict[str, Any], old_base: Any = None) -> str:
    """In words: "RoPE linear x4", "RoPE base 10,000 -> 1,000,000" (the old base when known), or both."""
    kinds = []
    if rope_scaling.get("factor"):
        kinds.append(f"RoPE {rope_scaling['rope_type']} x{rope_scaling['factor']}")
    if rope_scaling.get("rope_theta") is not None:
        new = base_text(rope_scaling["rope_theta"])
        known = _number(old_base)
        kinds.append(f"RoPE base {base_text(old_base)} -> {new}" if known else f"RoPE base {new}")
    return ", ".join(kinds)


# computes from the length trained before, not the new max_position_embeddings
NEEDS_ORIGINAL = ("yarn",)


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
    factor = (rope_scaling or {}).get("factor")  # none for a new base alone
    return int(limit * float(factor)) if factor else limit


def scaled_config(model_path: str, rope_scaling: dict[str, Any], max_positions: int | None):
    """The model's AutoConfig with this run's scaling and length merged in (unchanged without them)."""
    from transformers import AutoConfig

    return apply_scaling(AutoConfig.from_pretrained(model_path), rope_scaling, max_positions)


def apply_scaling(config, rope_scaling: dict[str, Any], max_positions: int | None):
    """Merge a scaling and length into a loaded config (in place; returned). Used for a model built from the
    base (training) and for a LoRA merge, whose base config does not have the scaling the run trained with."""
    if not rope_scaling and max_positions is None:
        return config
    text = getattr(config, "text_config", None) or config
    original = text.max_position_embeddings
    if rope_scaling:
        params = dict(rope_scaling)  # a base alone keeps the model's own rope_type (Llama-3.1's llama3 scaling)
        if params.get("rope_type") in NEEDS_ORIGINAL:
            params.setdefault("original_max_position_embeddings", original)
        if hasattr(text, "rope_parameters"):  # transformers 5: the base frequency is one of the parameters
            text.rope_parameters = {**(text.rope_parameters or {}), **params}
        else:  # transformers 4: rope_theta beside rope_scaling
            if "rope_theta" in params:
                text.rope_theta = params.pop("rope_theta")
            if params.get("rope_type", BASE_ONLY) != BASE_ONLY:
                text.rope_scaling = params
    text.max_position_embeddings = positions({"max_position_embeddings": original}, rope_scaling, max_positions)
    return config
