"""A resumable checkpoint (``output_dir/checkpoints/step-N``) as the Hugging Face folder a run's ``final/`` is.

To evaluate, convert or chat with a run at step N while it goes on (or after it died and will not be
resumed), without launching ranks or a GPU: DeepSpeed's ``zero_to_fp32`` gathers the fp32 master
weights of the trained tensors from every rank's ZeRO shards (stage 2 or 3); the run's recorded
settings (``complete.json``) rebuild the model as training built it (base folder, mode, LoRA shape);
those weights are put in, cast to the training dtype as DeepSpeed casts them into the module, and
the folder is written as ``final/`` is (safetensors or the LoRA adapter with its embeddings, the
tokenizer files byte for byte, the vocab reports, ``train_report.json`` naming the checkpoint).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

from zhllama.errors import UserError
from zhllama.model_card import lineage_of, write_model_card
from zhllama.files import atomic_output_dir, write_json_atomic
from zhllama.model_folder import require_model_folder
from zhllama.tokenizer_files import copy_tokenizer_files, copy_vocab_reports

from . import checkpoint
from .config import TrainConfig


def config_from_settings(settings: dict[str, Any]) -> TrainConfig:
    """The engine settings a checkpoint recorded, as a TrainConfig (phase-specific keys are left out)."""
    from zhllama.config import build

    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        parts = key.split(".")
        if parts[0] not in sections:
            continue
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    problems: list[str] = []
    cfg = build(TrainConfig, nested, problems)
    if problems or cfg is None:
        raise UserError("the checkpoint's recorded settings do not make an engine config", problems)
    return cfg


def read_checkpoint(path: Path) -> tuple[dict[str, Any], TrainConfig]:
    """The marker and settings of a whole checkpoint, or one clear refusal."""
    if not (path / checkpoint.MARKER).is_file():
        raise UserError(f"{path} is not a complete checkpoint (no {checkpoint.MARKER}): give a folder "
                        f"output_dir/checkpoints/step-N that a run finished writing")
    reason = checkpoint.unusable(path)
    if reason is not None:
        raise UserError(f"checkpoint {path} is unusable ({reason})")
    marker = checkpoint.read_marker(path)
    if not isinstance(marker.get("settings"), dict):
        raise UserError(f"checkpoint {path} records no settings (written by an older zhllama): resume it instead")
    cfg = config_from_settings(marker["settings"])
    require_model_folder(Path(cfg.model.path), f"the model the run started from ({checkpoint.MARKER}: model.path):")
    return marker, cfg


def _trained_weights(path: Path) -> dict[str, Any]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        return get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UserError(f"checkpoint {path}: DeepSpeed could not gather its weights: {exc}") from None


def _load_into(module, weights: dict[str, Any], path: Path) -> None:
    """Every trained tensor of the checkpoint into ``module``; frozen ones stay as the base folder has them."""
    import torch

    params = dict(module.named_parameters())
    unknown = sorted(set(weights) - set(module.state_dict()))
    untrained = sorted(name for name, p in params.items() if p.requires_grad and name not in weights)
    if unknown or untrained:
        raise UserError(f"checkpoint {path} does not fit the model its settings rebuild",
                        [f"not in the model: {n}" for n in unknown[:5]] + [f"not in the checkpoint: {n}"
                                                                           for n in untrained[:5]])
    with torch.no_grad():
        for name, value in weights.items():
            target = params.get(name)
            if target is not None:
                target.copy_(value.to(target.dtype))


# What decides which tensors a checkpoint holds, how they are read and (SFT) which prompts they answer:
# checkpoints average only when these are equal.
SHAPING = ("model.path", "model.tokenizer", "model.dtype", "model.rope_scaling", "model.max_position_embeddings",
           "mode", "lora.", "embeddings.", "data.template", "data.system_prompt")


def _shaping(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k.startswith(SHAPING)}


def _check_averageable(paths: list[Path], markers: list[dict[str, Any]], cfg: TrainConfig) -> None:
    from .settings import changes

    if len(paths) > 1 and cfg.mode == "lora":
        raise UserError("LoRA checkpoints do not average: the mean of the A and B factors is not the mean of their "
                        "products; merge each (sft export) and compare them, or train with mode=full")
    first = _shaping(markers[0]["settings"])
    for path, marker in zip(paths[1:], markers[1:]):
        differ = changes(first, _shaping(marker["settings"]))
        if differ:
            raise UserError(f"checkpoints {paths[0]} and {path} hold different models; only checkpoints of one "
                            f"model average", differ)


def _mean_weights(paths: list[Path]) -> dict[str, Any]:
    """The trained tensors of one checkpoint, or their mean over several (one checkpoint in memory at a time)."""
    total: dict[str, Any] = {}
    for i, path in enumerate(paths, 1):
        print(f"[zhllama] gathering the trained weights of {path} ({i}/{len(paths)})", file=sys.stderr, flush=True)
        weights = _trained_weights(path)
        if total and weights.keys() != total.keys():
            raise UserError(f"checkpoint {path} holds other tensors than {paths[0]}")
        for name, value in weights.items():
            if len(paths) == 1:
                total[name] = value
            elif name in total:
                total[name].add_(value)
            else:  # a copy: the loaded tensors may be views of mapped files, never summed into in place
                total[name] = value.clone()
        del weights
    return total if len(paths) == 1 else {name: value.div_(len(paths)) for name, value in total.items()}


def export_checkpoint(paths: str | Path | list, out: str | Path, *, overwrite: bool = False,
                      add_files: Callable[[Path, TrainConfig, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Write checkpoint ``paths`` (one, or several whose fp32 weights are averaged) as a model folder at
    ``out``; returns the report written there. ``add_files(folder, cfg, settings)`` adds a phase's own
    files before the folder appears (SFT: its template)."""
    from transformers import AutoModelForCausalLM

    from .guards import check_state_dict
    from .model import DTYPES, apply_mode, model_config, tokenizer_dir

    paths = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    out = Path(out)
    read = [read_checkpoint(path) for path in paths]
    markers, cfg = [marker for marker, _ in read], read[0][1]
    _check_averageable(paths, markers, cfg)
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace it")
    weights = _mean_weights(paths)
    check_state_dict(weights, str(out))
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, config=model_config(cfg), dtype=DTYPES[cfg.model.dtype])
    module = apply_mode(cfg, model)
    _load_into(module, weights, paths[0])
    marker = markers[-1]
    report = {key: marker.get(key) for key in ("step", "total_steps", "mode", "data_fingerprint", "settings",
                                               "settings_fingerprint", "data")}
    report.update(from_checkpoint=str(paths[-1].resolve()), base_model=str(cfg.model.path),
                  tokenizer_fingerprint=marker["settings"].get("tokenizer_fingerprint"))
    if len(paths) > 1:  # a mean: every source named, with its step and run
        report["averaged"] = [{"checkpoint": str(p.resolve()), "step": m["step"],
                               "settings_fingerprint": m.get("settings_fingerprint")} for p, m in zip(paths, markers)]
    report["lineage"] = lineage_of(cfg.model.path)
    if cfg.mode == "lora":  # `sft export` checks the base it merges into against this
        from zhllama.model_fingerprint import model_fingerprint

        report["base_model_fingerprint"] = model_fingerprint(cfg.model.path)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        extra = {"save_embedding_layers": bool(cfg.lora.modules_to_save)} if cfg.mode == "lora" else {}
        module.save_pretrained(tmp, safe_serialization=True, **extra)
        copy_tokenizer_files(tokenizer_dir(cfg), tmp)
        copy_vocab_reports([cfg.model.path], tmp)
        write_json_atomic(tmp / "train_report.json", report)
        if add_files is not None:
            add_files(tmp, cfg, marker["settings"])
        write_model_card(tmp, Path(out).name)  # after add_files: an SFT checkpoint's card shows its chat template
    return report


def describe(report: dict[str, Any]) -> str:
    """Which weights a report's folder holds: "step 2 of 4", or "the mean of steps 2, 4 and 6"."""
    if "averaged" not in report:
        return f"step {report['step']} of {report['total_steps']}"
    steps = [str(item["step"]) for item in report["averaged"]]
    return f"the mean of steps {', '.join(steps[:-1])} and {steps[-1]}"
