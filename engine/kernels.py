"""Optional Liger Triton kernels (RMSNorm, SwiGLU, RoPE) for the model being trained.

Liger patches transformers' modeling module for a model type, so it must run before the model is
built. It needs CUDA and Triton: ``model.liger=auto`` uses it when both are there and says in one
log line why not otherwise; ``on`` refuses to start without it; ``off`` never uses it. Its
cross-entropy kernels stay off: the engine's own fused loss (engine/loss.py) already never
materialises the logits, on every device.
"""
from __future__ import annotations

import importlib.util
import inspect

from zhllama.errors import UserError

KERNELS = {"rope": True, "swiglu": True, "rms_norm": True, "cross_entropy": False, "fused_linear_cross_entropy": False}


def liger_decision(setting: str, cuda: bool, installed: bool) -> tuple[bool, str]:
    """(use it?, the reason in words) for ``model.liger`` on this machine."""
    if setting == "off":
        return False, "model.liger=off"
    missing = [why for ok, why in ((cuda, "no CUDA device"), (installed, "liger-kernel is not installed")) if not ok]
    if not missing:
        return True, "CUDA and liger-kernel present"
    if setting == "on":
        raise UserError(f"model.liger=on but {' and '.join(missing)} (pip install liger-kernel on a CUDA machine, "
                        "or set model.liger=auto)")
    return False, " and ".join(missing)


def apply_liger(setting: str, model_type: str) -> str:
    """Patch transformers for ``model_type`` when the setting and the machine allow; returns a log line."""
    import torch

    installed = importlib.util.find_spec("liger_kernel") is not None
    use, why = liger_decision(setting, torch.cuda.is_available(), installed)
    if not use:
        return f"liger kernels: not used ({why})"
    from liger_kernel.transformers import monkey_patch

    apply = monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        if setting == "on":
            raise UserError(f"model.liger=on but liger-kernel has no kernels for model type {model_type!r}")
        return f"liger kernels: not used (no kernels for model type {model_type!r})"
    accepted = inspect.signature(apply).parameters
    apply(**{k: v for k, v in KERNELS.items() if k in accepted})
    return f"liger kernels: {', '.join(k for k, v in KERNELS.items() if v and k in accepted)} for {model_type}"


def attention_decision(cuda: bool, half: bool, hopper: bool, fa3: bool, fa2: bool) -> tuple[str, str]:
    """(attn_implementation, why) for ``model.attn_implementation=auto``: the fastest kernel here that
    keeps packed documents apart. flash-attention (varlen over the documents' position_ids) where
    installed and the dtype is bf16/fp16 — version 3 on Hopper — else flex_attention on CUDA (a
    block mask; measured +15% over sdpa's dense mask on an H200), else sdpa."""
    if not cuda:
        return "sdpa", "no CUDA device"
    if half and hopper and fa3:
        return "flash_attention_3", "CUDA on Hopper, flash-attn 3 installed"
    if half and fa2:
        return "flash_attention_2", "CUDA, flash-attn installed"
    return "flex_attention", "CUDA, " + ("flash-attn not installed" if half else "flash-attn needs bf16/fp16")


def resolve_attention(model_cfg) -> str:
    """Replace ``auto`` in ``model_cfg.attn_implementation`` by this machine's choice (before the run's
    settings are recorded, so a resume elsewhere that would choose another kernel is refused, not
    silently different); returns the log line."""
    if model_cfg.attn_implementation != "auto":
        return f"attention: {model_cfg.attn_implementation}"
    import torch
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    cuda = torch.cuda.is_available()
    hopper = cuda and torch.cuda.get_device_capability()[0] >= 9
    chosen, why = attention_decision(cuda, model_cfg.dtype in ("bfloat16", "float16"), hopper,
                                     cuda and is_flash_attn_3_available(), cuda and is_flash_attn_2_available())
    model_cfg.attn_implementation = chosen
    return f"attention: {chosen} (auto: {why})"
