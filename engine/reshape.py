"""Resume on another number of ranks: a lost node need not cost the run, nor a bigger allocation wait.

Why it is still the same training: the global batch of step s is a fixed slice of the epoch's
permutation, cut in order into micro batches of ``batch.micro_batch_size`` (engine/data.py), and each
micro batch's mean loss weighs the same in the gradient. So W ranks x A accumulation steps and
W' x A' with W x A = W' x A' (micro batch unchanged) train on the same micro batches at every step,
with the same schedule; only the order of float sums differs, and dropout masks (drawn per rank).

How: a ZeRO checkpoint holds each rank's slice of the flat weights and Adam moments, which only the
same number of ranks can read. Rank 0 converts it once into DeepSpeed's universal format (one fp32
weight and its moments per parameter, ``deepspeed.checkpoint.ds_to_universal``), kept in
``step-N/universal/``, and every rank loads its new slice from there (``checkpoint.load_universal``).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zhllama.errors import UserError

from .config import rank_counts

WORLD, ACCUMULATION, MICRO, GLOBAL = ("world_size", "batch.gradient_accumulation_steps", "batch.micro_batch_size",
                                      "batch.global_batch_size")
UNIVERSAL = "universal"  # step-N/universal/<step-N>/ holds the converted checkpoint
DEEPSPEED_TAG_FILES = ("latest_universal",)  # what the converter also writes beside its output
CONVERSION_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Reshape:
    """A resume whose ranks and accumulation steps changed, the global batch kept."""

    old_world: int
    new_world: int
    old_accumulation: int
    new_accumulation: int

    def describe(self) -> str:
        ranks = "rank" if self.old_world == 1 else "ranks"
        return (f"{self.old_world} {ranks} x {self.old_accumulation} accumulation steps -> {self.new_world} x "
                f"{self.new_accumulation}")


def reshape_of(what: str, stored: dict[str, Any] | None, current: dict[str, Any]) -> Reshape | None:
    """None when the ranks did not change; the Reshape when only ranks x accumulation did, with the
    global batch kept; UserError when the global batch would change (its samples and schedule would)."""
    if stored is None or stored.get(WORLD) == current[WORLD]:
        return None
    if not all(isinstance(stored.get(k), int) for k in (WORLD, ACCUMULATION, MICRO)):
        raise UserError(f"{what} was made by {stored.get(WORLD)} ranks and records no batch settings, "
                        f"this run has {current[WORLD]}; resume it with {stored.get(WORLD)} ranks")
    old_global = stored[WORLD] * stored[ACCUMULATION] * stored[MICRO]
    micro, world = current[MICRO], current[WORLD]
    new_global = world * current[ACCUMULATION] * micro
    if micro != stored[MICRO] or new_global != old_global:
        raise UserError(
            f"{what} was made with {stored[WORLD]} ranks x {stored[ACCUMULATION]} accumulation steps x "
            f"micro batch {stored[MICRO]} = global batch {old_global}; this run has {world} x {current[ACCUMULATION]} x "
            f"{micro} = {new_global}. On another number of ranks a resume must keep the micro batch and the global "
            f"batch (they decide what each step trains on and how long the schedule is): "
            + _hint(old_global, stored[MICRO], world))
    return Reshape(stored[WORLD], world, stored[ACCUMULATION], current[ACCUMULATION])


def _hint(global_batch: int, micro: int, world: int) -> str:
    if global_batch % (micro * world) == 0:
        return (f"set batch.micro_batch_size={micro} batch.gradient_accumulation_steps="
                f"{global_batch // (micro * world)}")
    micro_batches = global_batch // micro
    return (f"{micro_batches} micro batches per step cannot be shared by {world} ranks; use one of "
            f"{rank_counts(micro_batches)} ranks")


def as_reshaped(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with the settings a reshape may change taken from ``current`` (for the equality check)."""
    return {**stored, **{k: current.get(k) for k in (WORLD, ACCUMULATION, GLOBAL)}}


def universal_checkpoint(path: Path, rank: int) -> tuple[Path, str]:
    """Collective: rank 0 converts checkpoint ``path`` (once: the result is kept beside it) while the other
    ranks wait; returns (load_dir, tag) for DeepSpeed's load_checkpoint. Every rank fails together.

    They wait on a gloo group of their own with a long timeout: converting a 7B checkpoint can outlast
    the training group's (DEEPSPEED_TIMEOUT, 10 min), which would kill the ranks that wait."""
    root = path / UNIVERSAL
    error = [None]
    waiting = dist.new_group(backend="gloo", timeout=CONVERSION_TIMEOUT)  # made by all ranks before the wait
    if rank == 0 and not _converted(root / path.name):
        try:
            _convert(path, root)
        except Exception as exc:  # noqa: BLE001 - the other ranks must hear of any failure, not hang
            error[0] = str(exc) if isinstance(exc, UserError) else f"converting checkpoint {path} failed: {exc!r}"
    dist.broadcast_object_list(error, src=0, group=waiting)
    dist.destroy_process_group(waiting)
    if error[0]:
        raise UserError(error[0])
    return root, path.name


def _converted(folder: Path) -> bool:
    """The converter writes the optimizer's common state last (also true of a conversion made by hand)."""
    return (folder / "zero" / "optimizer_state.pt").is_file()


def _convert(path: Path, root: Path) -> None:
    partial = root.with_name(UNIVERSAL + ".partial")  # a crash mid-way leaves this, never root
    for leftover in (partial, root):  # root: a conversion by hand that did not finish
        shutil.rmtree(leftover, ignore_errors=True)
    workers = str(max(1, min(8, os.cpu_count() or 1)))
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(path),
               "--output_folder", str(partial / path.name), "--num_extract_workers", workers,
               "--num_merge_workers", workers,
               "--inject_missing_state"]  # ZeRO-1/2: the version record a pure data-parallel client never writes
    print(f"[zhllama] converting {path.name} to DeepSpeed's universal checkpoint (once; kept in {root}) ...",
          flush=True)
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"could not convert checkpoint {path} for another number of ranks "
                        f"(deepspeed.checkpoint.ds_to_universal exited {proc.returncode}):\n"
                        f"{(proc.stdout + proc.stderr)[-3000:]}")
    for name in DEEPSPEED_TAG_FILES:
        (partial / name).unlink(missing_ok=True)
    os.replace(partial, root)
    print(f"[zhllama] converted in {time.monotonic() - start:.0f} s", flush=True)


def optimizer_hyperparameters(engine) -> list[dict[str, Any]]:
    """Each param group's settings but its parameters and learning rate (the scheduler owns that)."""
    return [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
            for group in engine.optimizer.optimizer.param_groups]


def repair_after_universal_load(engine, hyperparameters: list[dict[str, Any]]) -> None:
    """Undo two slips of DeepSpeed's ZeRO-3 universal load (0.19): it gives every param group the first
    group's settings (a no-decay group would decay), and one 'step' tensor shared by every group, which
    AdamW then advances once per group each step (the bias correction of step 9 became step 10's)."""
    optimizer = engine.optimizer.optimizer
    for group, saved in zip(optimizer.param_groups, hyperparameters):
        group.update(saved)
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def reseed(seed: int, step: int, rank: int) -> None:
    """Random streams for a reshaped resume: the old ranks' saved streams do not map onto the new ones."""
    value = (seed * 1_000_003 + step * 7_919 + rank) % 2**32
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
