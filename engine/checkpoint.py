"""Resumable checkpoints: DeepSpeed's sharded state plus a completion marker written last.

Layout: ``output_dir/checkpoints/step-00000040/`` holds DeepSpeed's files (module, optimizer and
scheduler state of every rank), ``rng-rank{r}.pt`` per rank (``objective-rank{r}.pt`` too where the
objective keeps state between steps: GRPO's answers trained on again) and, written atomically by rank 0
after every rank has finished, ``complete.json``. A folder without ``complete.json`` (a process
died while writing) is never resumed from and is deleted by the next save or resume. The newest
``keep_last`` are kept, plus any whose marker says ``kept`` (a wsd run's last step before its decay).
A run continued into a changed schedule moves the old schedule's later checkpoints and final model
to ``output_dir/superseded/`` (engine/schedule.py says when a checkpoint may continue).
Assumes ``output_dir`` is on a filesystem every node sees (as DeepSpeed's own checkpoints do).
"""
from __future__ import annotations

import json
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zhllama.errors import UserError
from zhllama.files import write_json_atomic

from .config import ScheduleConfig
from .reshape import (Reshape, as_reshaped, optimizer_hyperparameters, repair_after_universal_load, reseed,
                      reshape_of, universal_checkpoint)
from .schedule import RatesDiffer, adopt_schedule

MARKER = "complete.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def list_complete(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete checkpoint folders that never got their marker (rank 0 only, while no save is running)."""
    root = checkpoints_dir(output_dir)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and not (p / MARKER).is_file():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def find_resume(output_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint folder to resume from: None (fresh start), or a complete one that loads.

    ``auto`` skips (and names) newer checkpoints whose marker is unreadable or whose files are
    truncated or missing, falling back to the newest one that is whole.
    """
    if resume == "never":
        return None
    if resume == "auto":
        complete = list_complete(output_dir)
        skipped = []
        for path in reversed(complete):
            reason = unusable(path)
            if reason is None:
                if skipped and _is_rank0():
                    print(f"[zhllama] warning: {'; '.join(skipped)}; resuming from {path.name} instead",
                          file=sys.stderr, flush=True)
                return path
            skipped.append(f"checkpoint {path} is unusable ({reason})")
        if skipped:
            raise UserError(f"no checkpoint in {checkpoints_dir(output_dir)} can be resumed: {'; '.join(skipped)}; "
                            f"delete them to start over, or use a new output_dir")
        return None
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise UserError(f"checkpoint.resume: {path} is not a complete checkpoint (no {MARKER})")
    reason = unusable(path)
    if reason is not None:
        raise UserError(f"checkpoint.resume: {path} is unusable ({reason})")
    return path


def read_marker(path: Path) -> dict[str, Any]:
    """The completion marker of ``path``; UserError when it is not a JSON object with an integer step."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path / MARKER}: unreadable ({exc})") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("step"), int):
        raise UserError(f"{path / MARKER}: not a checkpoint marker (no integer 'step')")
    return marker


def unusable(path: Path) -> str | None:
    """Why ``path`` cannot be resumed (garbage marker, truncated or missing files), or None.

    Markers list every file with its size; markers of older versions without the list pass.
    """
    try:
        marker = read_marker(path)
    except UserError as exc:
        return str(exc)
    for name, size in (marker.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written (truncated?)"
    return None


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _file_sizes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, output_dir: str | Path, step: int, meta: dict[str, Any], keep_last: int, kept: str = "",
         objective_state: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it. Returns the completed checkpoint folder. ``kept`` (why) exempts it from
    the ``keep_last`` rotation; ``objective_state``, this rank's state of the objective (GRPO's kept answers)."""
    root = checkpoints_dir(output_dir)
    tag = tag_for(step)
    path = root / tag
    rank = dist.get_rank()
    if rank == 0:
        remove_incomplete(output_dir)  # leftovers of a crash; nobody is writing them now
        if path.exists():  # a complete one for this step exists only if a resume re-ran it; redo cleanly
            shutil.rmtree(path)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    torch.save(_rng_state(), path / f"rng-rank{rank}.pt")
    if objective_state is not None:
        torch.save(objective_state, path / f"objective-rank{rank}.pt")
    dist.barrier()  # every rank's files are on disk before the marker says so
    if rank == 0:
        marker = {"step": step, "world_size": dist.get_world_size(), **meta, "files": _file_sizes(path)}
        write_json_atomic(path / MARKER, marker | ({"kept": kept} if kept else {}))
        for old in [p for p in list_complete(output_dir) if not _kept(p)][:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


def _kept(path: Path) -> bool:
    try:
        return bool(read_marker(path).get("kept"))
    except UserError:
        return False


def check_resumable(path: Path, world_size: int, data_fingerprint: str | None,
                    settings: dict[str, Any] | None = None, schedule: ScheduleConfig | None = None,
                    total_steps: int = 0) -> tuple[dict[str, Any], Reshape | None]:
    """Pre-flight: the marker of ``path`` and how the ranks changed (None: they did not); refused when
    this run cannot continue it (other data or settings; another global batch on another number of ranks;
    with ``schedule``, a changed schedule is accepted where the rates agree through the checkpoint's step:
    engine/schedule.py)."""
    marker = read_marker(path)
    stored = marker.get("settings")
    reshaped = None
    if marker.get("world_size") != world_size:
        if settings is None or stored is None:
            raise UserError(
                f"checkpoint {path} was written by {marker.get('world_size')} ranks, this run has {world_size}, and "
                f"it records no settings to check a change of ranks against; resume with the same number of ranks")
        reshaped = reshape_of(f"checkpoint {path}", stored, settings)
        stored = as_reshaped(stored, settings)
    theirs = marker.get("data_fingerprint")
    if data_fingerprint and theirs and theirs != data_fingerprint:
        raise UserError(f"checkpoint {path} was trained on other data (fingerprint {theirs[:12]}, this run's "
                        f"{data_fingerprint[:12]}); resume with the same data or use a new output_dir")
    if settings is not None:
        from .settings import check_same

        if stored is not None and schedule is not None:
            stored = adopt_schedule(f"checkpoint {path.name}", marker, stored, settings, schedule, total_steps)
        check_same(f"checkpoint {path}", stored, settings)
    return marker, reshaped


def choose_resume(output_dir: str | Path, resume: str, world_size: int, data_fingerprint: str | None,
                  settings: dict[str, Any], schedule: ScheduleConfig,
                  total_steps: int) -> tuple[Path | None, dict[str, Any] | None, Reshape | None, list[Path]]:
    """``find_resume`` checked against this run: (checkpoint, marker, reshape, superseded). Under ``auto``, when
    only the schedule changed (a longer wsd run), checkpoints trained with other rates give way to the newest
    older one whose rates agree; they are returned as ``superseded`` (``set_aside`` moves them)."""
    first = find_resume(output_dir, resume)
    if first is None:
        return None, None, None, []
    older = [p for p in reversed(list_complete(output_dir)) if p.name < first.name] if resume == "auto" else []
    candidates = [first] + [p for p in older if unusable(p) is None]
    differing = []
    for path in candidates:
        try:
            marker, reshaped = check_resumable(path, world_size, data_fingerprint, settings, schedule, total_steps)
            return path, marker, reshaped, candidates[:len(differing)]
        except RatesDiffer as exc:
            differing.append(str(exc))
    raise UserError(
        f"the schedule changed, and no checkpoint in {checkpoints_dir(output_dir)} was trained with this run's "
        f"learning rates up to its step, so none can continue into it (a run with schedule.kind=wsd keeps the "
        f"checkpoint at the start of its decay, from which a longer wsd run continues); keep the old schedule, or "
        f"start a new output_dir from a final model (model.path=...)", differing)


SUPERSEDED = "superseded"  # in output_dir: what a longer schedule replaced (moved, never deleted)


def set_aside(output_dir: str | Path, paths: list[Path], step: int) -> Path:
    """Rank 0: move ``paths`` into output_dir/superseded/from-step-<step>/ (the step the run went on from)."""
    target = Path(output_dir) / SUPERSEDED / f"from-{tag_for(step)}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = target.with_name(f"from-{tag_for(step)}-{suffix}")
    target.mkdir(parents=True)
    for path in paths:
        shutil.move(str(path), str(target / path.name))
    return target


def load(engine, path: Path, reshaped: Reshape | None = None, seed: int = 0, step: int = 0) -> None:
    """Collective: restore module, optimizer, scheduler and this rank's RNG (on another number of ranks:
    from the universal conversion, with fresh per-rank random streams)."""
    load_dir, tag = path.parent, path.name
    if reshaped is not None:
        load_dir, tag = universal_checkpoint(path, dist.get_rank())
        hyperparameters = optimizer_hyperparameters(engine)
    load_path, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load checkpoint {path}")
    if reshaped is not None:
        repair_after_universal_load(engine, hyperparameters)
        reseed(seed, step, dist.get_rank())
        return
    rng = path / f"rng-rank{dist.get_rank()}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))


def check_reshape_at_group_start(path: Path, marker: dict[str, Any], repeat: int, world_size: int) -> None:
    """A checkpoint inside a group of ``repeat`` steps on the same GRPO answers holds them per rank and micro
    batch: only as many ranks can take them back."""
    if marker["step"] % repeat:
        raise UserError(f"checkpoint {path} (step {marker['step']}) is inside a group of {repeat} steps trained on the "
                        f"same answers, which its {marker.get('world_size')} ranks kept; resume it on as many ranks, "
                        f"or resume from a checkpoint at a multiple of {repeat} steps on {world_size} "
                        f"(checkpoint.resume=PATH)")


def load_objective_state(path: Path, rank: int) -> dict[str, Any] | None:
    """This rank's objective state saved with checkpoint ``path`` (None where there was none to keep)."""
    file = path / f"objective-rank{rank}.pt"
    return torch.load(file, weights_only=False) if file.is_file() else None
