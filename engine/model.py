"""Model and tokenizer loading, pre-flight checks, and the three training modes.

Under ZeRO-3 the model is built inside DeepSpeed's partitioned init (a live ``HfDeepSpeedConfig``
before ``from_pretrained``), so no rank ever holds the full fp32 model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zhllama.errors import UserError
from zhllama.model_folder import embedding_rows_match, require_model_folder
from zhllama.tokenizer_files import VOCAB_REPORTS

from .config import TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE_SIZE_KEYS = ("old_vocab_size", "base_vocab_size")  # resize_report: rows the model had; merge_report: base pieces


def tokenizer_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.model.tokenizer or cfg.model.path)


def check_model_folder(cfg: TrainConfig) -> None:
    """Refuse missing folders and a model whose embedding rows do not match its tokenizer."""
    model_dir, tok_dir = Path(cfg.model.path), tokenizer_dir(cfg)
    require_model_folder(model_dir, "model.path:")
    ok, message = embedding_rows_match(str(model_dir), str(tok_dir))
    if not ok:
        raise UserError(f"model {model_dir} does not match tokenizer {tok_dir}: {message}")


def base_vocab_size(cfg: TrainConfig) -> int:
    """Rows that existed before the vocab merge (kept fixed by embeddings.train_new_rows_only)."""
    if cfg.embeddings.base_vocab_size is not None:
        return cfg.embeddings.base_vocab_size
    for name in VOCAB_REPORTS:
        path = Path(cfg.model.path) / name
        if path.is_file():
            report = json.loads(path.read_text(encoding="utf-8"))
            for key in BASE_SIZE_KEYS:
                if isinstance(report.get(key), int):
                    return report[key]
    raise UserError(
        f"embeddings.train_new_rows_only: cannot tell how many rows are old; {cfg.model.path} has no "
        f"{' or '.join(VOCAB_REPORTS)} with one of {list(BASE_SIZE_KEYS)}; set embeddings.base_vocab_size"
    )


def model_config(cfg: TrainConfig):
    """The model's config as this run builds it (``model.rope_scaling``/``max_position_embeddings`` merged in)."""
    from zhllama.rope import scaled_config

    return scaled_config(cfg.model.path, cfg.model.rope_scaling, cfg.model.max_position_embeddings)


def load_model(cfg: TrainConfig, ds_config: dict[str, Any]):
    """Build the model (partitioned at construction under ZeRO-3); returns (model, keepalive)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    keepalive = None
    if ds_config.get("zero_optimization", {}).get("stage") == 3:
        keepalive = HfDeepSpeedConfig(ds_config)  # must stay alive until deepspeed.initialize
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.path, config=model_config(cfg), dtype=DTYPES[cfg.model.dtype],
        attn_implementation=cfg.model.attn_implementation,
    )
    model.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, keepalive


def embedding_params(model) -> list[torch.nn.Parameter]:
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not params[0]:
        params.append(out.weight)
    return params


def apply_mode(cfg: TrainConfig, model):
    """Freeze/wrap the model for ``cfg.mode``; returns the module to train (a PeftModel for lora)."""
    if cfg.mode == "full":
        model.requires_grad_(True)
        return model
    if cfg.mode == "embeddings":
        model.requires_grad_(False)
        params = embedding_params(model)
        for p in params:
            p.requires_grad_(True)
        if cfg.embeddings.train_new_rows_only:
            keep = base_vocab_size(cfg)
            for p in params:
                _freeze_rows(p, keep)
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    _check_lora_targets(cfg, model)
    full = _embeddings_named(model, cfg.lora.modules_to_save)
    peft_config = PeftLoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets) or None, task_type="CAUSAL_LM",
        **({"target_parameters": list(cfg.lora.target_parameters)} if cfg.lora.target_parameters else {}),
    )
    # Adapters in the model's dtype: PEFT would make them fp32 beside bf16/fp16 weights, and ZeRO
    # flattens each parameter group into one buffer of one dtype (it asserts so in defragment).
    # DeepSpeed keeps fp32 master copies of every trained tensor anyway.
    peft_model = get_peft_model(model, peft_config, autocast_adapter_dtype=False)
    # The embeddings train in place, not as PEFT modules_to_save: those keep a frozen original
    # beside a trainable copy of the two largest matrices (1,417 M -> 1,680 M parameters at 1.4B).
    # The adapter file still carries them (save_embedding_layers, engine/export.py).
    for module in full:
        module.requires_grad_(True)
    # The decoder layers' inputs must carry gradients when the input embeddings are frozen: with whole
    # layers as ZeRO-3 fetch units (zero3_fetch_units) DeepSpeed otherwise runs a layer's backward with its
    # weights still partitioned ("size of tensor a (0) must match ... (8)", lora.modules_to_save=[]), and
    # gradient checkpointing needs the same to recompute a layer.
    if cfg.model.gradient_checkpointing or model.get_input_embeddings() not in full:
        peft_model.enable_input_require_grads()
    return peft_model


def _check_lora_targets(cfg: TrainConfig, model) -> None:
    """Every name in lora.targets/modules_to_save is a module, every lora.target_parameters entry a parameter."""
    import inspect

    from peft import LoraConfig as PeftLoraConfig

    problems = []
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.lora.targets + cfg.lora.modules_to_save if t not in names]
    if missing:
        problems.append(f"lora.targets/modules_to_save: the model has no modules named {missing}")
        experts = sorted({n.split(".layers.")[-1].split(".", 1)[-1] for n, p in model.named_parameters()
                          if len(getattr(p, "ds_shape", p.shape)) == 3 and ".layers." in n})
        if experts:
            problems.append(f"its experts are 3-D parameters, not modules: give them to lora.target_parameters "
                            f"(these: {experts})")
    parameters = [n for n, _ in model.named_parameters()]
    absent = [t for t in cfg.lora.target_parameters if not any(n == t or n.endswith("." + t) for n in parameters)]
    if absent:
        problems.append(f"lora.target_parameters: the model has no parameters named {absent}")
    if cfg.lora.target_parameters and "target_parameters" not in inspect.signature(PeftLoraConfig).parameters:
        problems.append("lora.target_parameters needs peft >= 0.17 (pip install -U peft)")
    if problems:
        raise UserError("LoRA settings that do not fit the model:", problems)


def _embeddings_named(model, names: list[str]) -> list[torch.nn.Module]:
    """The input/output embedding modules named in ``lora.modules_to_save`` (nothing else can be)."""
    embeddings = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    found, others = [], []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in names:
            if any(module is e for e in embeddings):
                found.append(module)
            else:
                others.append(name)
    if others:
        raise UserError(f"lora.modules_to_save: only the input/output embeddings can be trained in full beside "
                        f"LoRA, not {others}; add other modules to lora.targets")
    return found


def _freeze_rows(param: torch.nn.Parameter, keep: int) -> None:
    """Zero the gradient of rows [0, keep): with no weight decay on this tensor, Adam leaves them exact.

    The hook runs on the full (gathered) gradient before DeepSpeed reduces and partitions it.
    """
    rows = getattr(param, "ds_shape", param.shape)[0]
    if not 0 < keep <= rows:
        raise UserError(f"embeddings.base_vocab_size={keep} but the embedding has {rows} rows")

    def mask(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:keep] = 0
        return grad

    param.register_hook(mask)
    param.zhllama_frozen_rows = keep  # read by param_groups: such tensors get no weight decay


def param_groups(cfg: TrainConfig, module) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices; none on norms, biases and row-frozen embeddings."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)
        if len(shape) < 2 or getattr(p, "zhllama_frozen_rows", 0):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def count_parameters(module) -> tuple[int, int]:
    """(trainable, total) element counts, correct under ZeRO-3 (ds_numel)."""
    trainable = total = 0
    for p in module.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def check_sequence_length(cfg: TrainConfig, seq_len: int | None) -> None:
    """Refuse sequences longer than the positions the model (with this run's RoPE scaling) covers."""
    from .context import check_sequence_length as check

    check(cfg.model.path, cfg.model.rope_scaling, cfg.model.max_position_embeddings, seq_len)


def zero3_fetch_units(module, model, unit: str) -> str:
    """ZeRO-3: gather each decoder layer's weights as one unit (``unit="layer"``); returns a log line.

    Why: ZeRO-3 hooks every module to gather its weights before it runs and release them after,
    forward and backward: per layer that is the attention, the MLP, their 7 projections and 2
    norms — and under LoRA each projection's base layer, A, B, dropout and their containers too.
    Marked as DeepSpeed leaf modules (deepspeed.utils.set_z3_leaf_modules, made for MoE experts),
    the decoder layers (transformers' ``_no_split_modules``) are hooked once each and their weights
    gathered together. Measured on the CPU dry run of benchmarks/gpu_throughput.py (median of 3):
    full 5,789 -> 6,475 tokens/s, LoRA 3,142 -> 4,064. The same training: weights agree to float
    rounding (1e-7 after 16 steps; gradients are reduced in other buckets), so the setting is
    still recorded with the run and a resume may not change it.
    """
    if unit != "layer":
        return "ZeRO-3 fetches: per submodule (deepspeed.zero3_fetch=module)"
    from deepspeed.utils import set_z3_leaf_modules

    classes = list(getattr(model, "_no_split_modules", None) or [])
    leaves = set_z3_leaf_modules(module, classes, raise_if_not_found=False) if classes else []
    if not leaves:
        return f"ZeRO-3 fetches: per submodule ({type(model).__name__} names no decoder layer class)"
    return f"ZeRO-3 fetches: whole decoder layers ({len(leaves)} x {type(leaves[0]).__name__})"
