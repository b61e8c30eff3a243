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
