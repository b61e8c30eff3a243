"""Learning-rate schedules, and when a checkpoint of one schedule may continue under another.

``wsd`` (warmup, stable, decay) holds the peak rate until the last ``decay_fraction`` of the steps,
then decays to ``min_lr_ratio`` (``1-sqrt`` shape by default, the best of the shapes compared in
Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations").
Its stable phase does not depend on the run's length, which is why continued pretraining uses it:
a checkpoint taken before the decay can go on to a longer run as if that run had been planned from
the start. The engine always keeps the checkpoint at the start of the decay for that.

The rule that decides it is exact and holds for every kind: a checkpoint at step s continues a run
with another schedule only when both schedules give the same rate at every step 0..s (step s
included, since the optimizer already holds the rate for the next step). The data order does not
depend on the run's length (engine/data.py), so the continued run equals the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from zhllama.errors import UserError

from .config import ScheduleConfig

PREFIX = "schedule."


def decay_start(schedule: ScheduleConfig, total_steps: int) -> int | None:
    """wsd: the step after which the rate decays (the last step of the stable phase); None for other kinds."""
    if schedule.kind != "wsd":
        return None
    return max(schedule.warmup_steps, total_steps - round(schedule.decay_fraction * total_steps))


def lr_factor(schedule: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """The multiplier of optim.lr for the step about to be taken (``step`` = optimizer steps already taken)."""
    warm, kind, floor = schedule.warmup_steps, schedule.kind, schedule.min_lr_ratio
    start = decay_start(schedule, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        if kind == "wsd":
            if step <= start:
                return 1.0
            left = min(1.0, (step - start) / max(1, total_steps - start))
            drop = math.sqrt(left) if schedule.decay_shape == "1-sqrt" else left
            return 1.0 - (1.0 - floor) * drop
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if kind == "linear":
            return 1.0 - (1.0 - floor) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class RatesDiffer(UserError):
    """Only the schedule changed, but the checkpoint was trained with other rates: an older one may fit."""


def only_schedule_changed(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """True when some ``schedule.*`` setting differs and nothing else that decides the weights does."""
    from .settings import changes

    changed = [c.split(":", 1)[0] for c in changes(stored, current)]
    return bool(changed) and all(key.startswith(PREFIX) for key in changed)


def stored_schedule(stored: dict[str, Any]) -> ScheduleConfig:
    """The ScheduleConfig a run recorded (fields it predates keep their defaults)."""
    names = {f.name for f in dataclasses.fields(ScheduleConfig)}
    return ScheduleConfig(**{k[len(PREFIX):]: v for k, v in stored.items()
                             if k.startswith(PREFIX) and k[len(PREFIX):] in names})


def first_different_rate(old: ScheduleConfig, old_total: int, new: ScheduleConfig, new_total: int,
                         through: int) -> int | None:
    """The first step in 0..through where the two schedules' rates differ; None when they agree."""
    f, g = lr_factor(old, old_total), lr_factor(new, new_total)
    return next((s for s in range(through + 1) if f(s) != g(s)), None)


def adopt_schedule(what: str, marker: dict[str, Any], stored: dict[str, Any], current: dict[str, Any],
                   schedule: ScheduleConfig, total_steps: int) -> dict[str, Any]:
    """``stored`` with this run's schedule settings when only the schedule changed and the checkpoint's rates
    agree with this run's through its step (so the equality check passes); RatesDiffer when they do not.
    Any other change is left for the equality check to report."""
    if not only_schedule_changed(stored, current):
        return stored
    step, old_total = int(marker["step"]), int(marker.get("total_steps", -1))
    differ = (first_different_rate(stored_schedule(stored), old_total, schedule, total_steps, step)
              if old_total > 0 else 0)
    if differ is not None:
        raise RatesDiffer(f"{what} (step {step}) was trained for a {old_total}-step schedule whose learning rate "
                          f"differs from this run's at step {differ}")
    return {**stored, **{k: v for k, v in current.items() if k.startswith(PREFIX)}}
