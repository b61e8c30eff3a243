"""Process group setup and the DeepSpeed JSON the engine hands to deepspeed.initialize.

Launch is detected from the environment (torchrun / deepspeed launcher set RANK, WORLD_SIZE, ...);
a plain ``python -m pretrain train`` becomes a 1-rank group with env defaults, so the same code
path (ZeRO included) runs everywhere. gloo on CPU, nccl on GPUs.
"""
from __future__ import annotations

import atexit
import copy
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from zhllama.errors import UserError

from .config import DS_PRESET_DIR, DS_PRESETS, TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit; the run's outputs are written
            pass


def die_with_parent() -> bool:
    """Linux: SIGTERM this process when its parent (the launcher) dies; False where unsupported.

    Killing only ``torchrun`` would otherwise leave the ranks training to the end, holding the
    GPUs and writing checkpoints nobody waits for. Set only under a launcher: a plain ``python``
    run's parent is the user's shell, which may exit on purpose (nohup).
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def init_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed via DeepSpeed (once); return (rank, world_size, local_rank)."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" in os.environ:  # started by torchrun / deepspeed: end with the launcher
            die_with_parent()
        else:  # plain `python -m ...`: a group of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
        # Tear the group down before interpreter shutdown: a group left to static destructors
        # can abort a rank at exit ("terminate called without an active exception") after a
        # run that succeeded. atexit runs after every caller is done with dist.get_rank().
        atexit.register(_destroy_process_group)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _deep_merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def load_ds_preset(preset: str) -> dict[str, Any]:
    path = DS_PRESET_DIR / f"{preset}.json" if preset in DS_PRESETS else Path(preset)
    if not path.is_file():
        raise UserError(f"deepspeed.preset: {path} does not exist (named presets: {', '.join(DS_PRESETS)})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"deepspeed.preset: {path} is not valid JSON: {exc}") from None


def build_ds_config(cfg: TrainConfig, world_size: int, hidden_size: int, widest: int | None = None,
                    layer_numel: int = 0) -> dict[str, Any]:
    """The preset with overrides merged and every "auto" filled from the one place it is set here.

    Batch sizes, clipping and precision live in the engine config only; the JSON says "auto".
    ``layer_numel``: weights of one decoder layer (``first_layer_numel``), for the prefetch size.
    With sequence parallelism DeepSpeed still sees every rank as a data rank (it averages the gradients
    over all of them: engine/sequence_parallel.py), so its batch counts each sequence once per group member.
    """
    ds = _deep_merge(copy.deepcopy(load_ds_preset(cfg.deepspeed.preset)), copy.deepcopy(cfg.deepspeed.overrides))
    sequence = cfg.deepspeed.sequence_parallel
    global_batch = cfg.batch.resolve(world_size // sequence) * sequence
    autos = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": cfg.batch.micro_batch_size,
        "gradient_accumulation_steps": cfg.batch.gradient_accumulation_steps,
        "gradient_clipping": cfg.optim.max_grad_norm,
    }
    for key, value in autos.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise UserError(
                f"deepspeed preset sets {key}={ds[key]} but the engine config gives {value}; set it in one place "
                f"(write \"auto\" in the JSON)"
            )
    for section, wanted in (("bf16", cfg.model.dtype == "bfloat16"), ("fp16", cfg.model.dtype == "float16")):
        ds.setdefault(section, {})
        if ds[section].get("enabled", "auto") == "auto":
            ds[section]["enabled"] = wanted
    zero = ds.setdefault("zero_optimization", {})
    # The same sizes the HF integration derives from the hidden size.
    sizes = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": _prefetch_size(cfg, hidden_size, layer_numel),
        "stage3_param_persistence_threshold": _persistence_threshold(cfg, hidden_size, widest or hidden_size),
    }
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    leftover = [k for k, v in _walk(ds) if v == "auto"]
    if leftover:
        raise UserError(f"deepspeed config: no value for {', '.join(leftover)} (replace \"auto\" with a value)")
    return ds


def _prefetch_size(cfg: TrainConfig, hidden_size: int, layer_numel: int) -> int:
    """Elements ZeRO-3 gathers ahead of use. 0.9 x hidden^2 (the HF integration's value) is about one
    projection: right when each submodule is fetched on its own. When whole decoder layers are
    (deepspeed.zero3_fetch=layer), it would prefetch a sliver of the next layer and gather the rest
    only when that layer starts; one layer's worth lets its gather overlap the current layer's
    compute (FSDP's per-layer prefetch), at the memory of one more gathered layer."""
    per_projection = int(0.9 * hidden_size * hidden_size)
    return max(per_projection, layer_numel) if cfg.deepspeed.zero3_fetch == "layer" else per_projection


def _persistence_threshold(cfg: TrainConfig, hidden_size: int, widest: int) -> int:
    """Tensors below this many elements stay whole on every rank under ZeRO-3.

    10 x hidden (the HF integration's value) keeps norms whole. LoRA adds r x width matrices
    (widest = the largest in/out width, e.g. the MLP's): partitioned, ZeRO-3 would gather every
    one of them every step — measured slower than full training. Whole on each rank they cost
    r x width x layers x 7 elements (about 40 M for a 7B model at r=64), far below the base weights
    that stay partitioned.
    """
    threshold = 10 * hidden_size
    if cfg.mode == "lora":
        threshold = max(threshold, cfg.lora.r * widest + 1)
    return threshold


def _walk(node: Any, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def offloads(ds: dict[str, Any], what: str = "optimizer") -> bool:
    """Does the config move ``what`` (optimizer state or param) off the GPU (ZeRO-Offload)?"""
    off = ds.get("zero_optimization", {}).get(f"offload_{what}", {})
    return isinstance(off, dict) and off.get("device", "none") not in ("none", None)


def single_rank_zero3_hint(ds: dict[str, Any], world_size: int) -> str | None:
    """ZeRO-3 on one rank partitions nothing yet still gathers and releases every layer's weights
    around each use (measured on one H200: 29,888 tokens/s against 34,647 with ZeRO-2). Only
    parameter offload makes it worth it there."""
    zero = ds.get("zero_optimization", {})
    if world_size != 1 or zero.get("stage") != 3 or offloads(ds, "param"):
        return None
    return ("ZeRO-3 on a single rank partitions nothing but still gathers every layer's weights each step; "
            "deepspeed.preset=zero2 holds the same model states (one rank partitions nothing either way) and runs faster")
