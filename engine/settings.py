"""The resolved settings that decide a run's result, and the refusal to mix two of them in one output_dir.

A checkpoint marker and train_report.json carry ``settings`` (a flat ``{dotted.key: value}`` of
every config field, the world size and the data/tokenizer fingerprints) and its sha256. A resume
or an "already finished" answer compares them with this run's: any change in a field that can
change the weights (mode, model, optimizer, schedule, batch, seed, data, DeepSpeed) is refused
with the list of what changed. Fields that cannot change the weights (logging, eval cadence,
checkpoint cadence, output_dir) are left out, so they may change between a run and its resume.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from zhllama.errors import UserError
from zhllama.files import sha256_json

# Prefixes of dotted keys that cannot change the trained weights. ``data.dir`` is a location only: the
# data's content is compared through data_fingerprint (prepare's cache key), so moved shards still resume.
NEUTRAL = ("output_dir", "logging.", "eval.", "checkpoint.", "model.gradient_checkpointing", "model.mlp_chunk_tokens",
           "data.eval_split",
           "data.dir", "data.cache_dir", "grpo.judge.url", "grpo.judge.api_key_env", "grpo.judge.workers")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def result_settings(cfg: Any, world_size: int, data_fingerprint: str | None,
                    tokenizer_fingerprint: str | None) -> dict[str, Any]:
    """Flat, JSON-normalised settings that decide the trained weights (the accumulation as resolved for
    ``world_size``: an unset one is derived from the global batch)."""
    if hasattr(cfg, "batch"):
        cfg.batch.resolve(world_size)
    flat = _flatten(dataclasses.asdict(cfg))
    flat = {k: v for k, v in flat.items() if not k.startswith(NEUTRAL)}
    flat.update(world_size=world_size, data_fingerprint=data_fingerprint, tokenizer_fingerprint=tokenizer_fingerprint)
    return json.loads(json.dumps(flat, sort_keys=True, default=str))  # tuples -> lists, as read back from JSON


def fingerprint(settings: dict[str, Any]) -> str:
    return sha256_json(settings)


# Settings added after runs began recording theirs, each with the value that trains exactly as the
# engine did before it existed: a checkpoint or finished run that lacks the key is the same run when
# this run has that value, so upgrading zhllama does not strand a run half way. (fused_loss, liger and
# zero3_fetch are not here: their defaults change float rounding, so such a resume is refused.)
ADDED_LATER = {"model.neftune_alpha": 0.0, "model.rope_scaling": {}, "model.max_position_embeddings": None,
               "schedule.decay_fraction": 0.2, "deepspeed.sequence_parallel": 1, "schedule.decay_shape": "1-sqrt", "deepspeed.overrides": {},
               "objective": "sft", "dpo.loss": "sigmoid", "dpo.beta": 0.1, "dpo.label_smoothing": 0.0,
               "dpo.nll_weight": 0.0, "dpo.simpo_gamma": 0.5, "kto.loss": "kto", "kto.beta": 0.1, "kto.desirable_weight": 1.0,
               "kto.undesirable_weight": 1.0, "grpo.beta": 0.0, "grpo.kl_correction": True, "grpo.iterations": 1,
               "grpo.epsilon": 0.2, "grpo.epsilon_high": None, "grpo.delta": None, "grpo.importance_sampling": "token",
               "grpo.dynamic_sampling": 0, "grpo.overlong_buffer": 0, "grpo.overlong_penalty": 1.0,
               "grpo.gather_for_generation": True, "grpo.top_entropy_quantile": 1.0,
               "grpo.judge.model": None, "grpo.judge.max_tokens": 256, "grpo.ref_sync_steps": 0, "grpo.ref_sync_alpha": 0.6,
               "distill.teacher": None, "distill.beta": 0.5, "distill.lmbda": 0.5, "distill.temperature": 1.0,
               "distill.max_new_tokens": 256, "distill.top_p": 1.0, "distill.gather_for_generation": True,
               "lora.target_parameters": [], "moe.aux_loss_coef": None, "moe.balance": "global_batch",
               "moe.z_loss_coef": 0.0, "moe.train_router": True}
_ABSENT = object()


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every deciding setting that differs (neutral keys are never compared)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(NEUTRAL):
            continue
        if key not in old and ADDED_LATER.get(key, _ABSENT) == new.get(key):
            continue  # recorded before the setting existed, and this run keeps the old behaviour
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same(what: str, stored: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to continue or reuse ``what`` (a checkpoint or a finished run) made with other settings.

    ``stored`` is None for outputs written before settings were recorded: they are accepted as before.
    """
    if stored is None:
        return
    changed = changes(stored, current)
    if any(c.startswith("data_fingerprint:") for c in changed):
        raise UserError(f"{what} was trained on other data; resume with the same data or use a new output_dir. "
                        f"Changed:", changed)
    if changed:
        raise UserError(
            f"{what} was made with other settings, so continuing or reusing it would not give this run's result; "
            f"use a new output_dir (or restore the old settings). Changed:", changed)
