"""Warmup-stable-decay, and which checkpoint may continue into a changed schedule (units, no ranks).
The run itself — a longer wsd run continuing a finished shorter one equals the longer run planned
from the start — is tests/test_train_cli.py::test_a_longer_wsd_run_continues_from_the_start_of_the_old_decay."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine import checkpoint, settings
from engine.config import TrainConfig
from engine.schedule import decay_start, first_different_rate, lr_factor
from zhllama.config import load_config
from zhllama.errors import UserError


def _cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, ["model.path=m", *overrides])


def test_wsd_warms_up_holds_the_peak_then_decays_to_the_floor():
    schedule = _cfg("schedule.kind=wsd", "schedule.warmup_steps=2", "schedule.decay_fraction=0.25",
                    "schedule.min_lr_ratio=0.1").schedule
    assert decay_start(schedule, 20) == 15
    f = lr_factor(schedule, 20)
    assert [f(s) for s in range(2)] == [0.5, 1.0]
    assert [f(s) for s in range(2, 16)] == [1.0] * 14
    assert f(16) == pytest.approx(1 - 0.9 * math.sqrt(1 / 5))  # 1-sqrt: steep first, flat at the end
    assert f(20) == pytest.approx(0.1) and all(f(s) > f(s + 1) for s in range(15, 20))
    linear = lr_factor(_cfg("schedule.kind=wsd", "schedule.decay_fraction=0.25", "schedule.decay_shape=linear",
                            "schedule.min_lr_ratio=0.1").schedule, 20)
    assert linear(16) == pytest.approx(1 - 0.9 / 5) and linear(20) == pytest.approx(0.1)
    assert decay_start(_cfg("schedule.kind=cosine").schedule, 20) is None


def test_a_longer_wsd_schedule_has_the_same_rates_until_the_old_decay():
    wsd = _cfg("schedule.kind=wsd", "schedule.warmup_steps=2", "schedule.decay_fraction=0.2").schedule
    assert first_different_rate(wsd, 100, wsd, 1000, through=80) is None
    assert first_different_rate(wsd, 100, wsd, 1000, through=90) == 81  # the old decay's first step
    cosine = _cfg("schedule.warmup_steps=2").schedule
    assert first_different_rate(cosine, 100, cosine, 1000, through=80) == 3  # right after warmup
    constant = _cfg("schedule.kind=constant").schedule
    assert first_different_rate(constant, 100, constant, 1000, through=99) is None


def test_decay_fraction_out_of_range_is_refused_with_the_rest():
    with pytest.raises(UserError) as info:
        _cfg("schedule.kind=wsd", "schedule.decay_fraction=0", "schedule.min_lr_ratio=2")
    assert "decay_fraction: must be in (0, 1], got 0" in str(info.value) and "min_lr_ratio" in str(info.value)


def _checkpoints(root: Path, cfg: TrainConfig, total_steps: int, steps: list[int]) -> list[Path]:
    stored = settings.result_settings(cfg, 1, "d1", "t1")
    folders = []
    for step in steps:
        folder = checkpoint.checkpoints_dir(root) / checkpoint.tag_for(step)
        folder.mkdir(parents=True)
        (folder / checkpoint.MARKER).write_text(json.dumps(
            {"step": step, "world_size": 1, "data_fingerprint": "d1", "total_steps": total_steps, "settings": stored}))
        folders.append(folder)
    return folders


def _choose(root: Path, cfg: TrainConfig, total_steps: int, resume: str = "auto"):
    current = settings.result_settings(cfg, 1, "d1", "t1")
    return checkpoint.choose_resume(root, resume, 1, "d1", current, cfg.schedule, total_steps)


WSD = ("schedule.kind=wsd", "schedule.decay_fraction=0.5")


def test_a_longer_schedule_goes_on_from_the_newest_checkpoint_with_the_same_rates(tmp_path):
    # 10 steps, decay after step 5: checkpoints 4 and 5 have only seen the peak rate, 6 and 8 the decay.
    at4, at5, at6, at8 = _checkpoints(tmp_path, _cfg(*WSD, "schedule.max_steps=10"), 10, [4, 5, 6, 8])
    path, marker, reshaped, superseded = _choose(tmp_path, _cfg(*WSD, "schedule.max_steps=30"), 30)
    assert (path, marker["step"], reshaped, superseded) == (at5, 5, None, [at8, at6])
    # the same schedule resumes the newest, as always
    assert _choose(tmp_path, _cfg(*WSD, "schedule.max_steps=10"), 10)[0] == at8
    # named explicitly, a checkpoint of other rates is refused, not replaced by an older one
    with pytest.raises(UserError, match=r"step-00000008 \(step 8\) was trained for a 10-step schedule whose "
                                        r"learning rate differs from this run's at step 6"):
        _choose(tmp_path, _cfg(*WSD, "schedule.max_steps=30"), 30, resume=str(at8))


def test_no_checkpoint_with_the_same_rates_refuses_and_other_changes_never_search(tmp_path):
    _checkpoints(tmp_path, _cfg("schedule.max_steps=10"), 10, [4, 8])
    with pytest.raises(UserError, match="the schedule changed, and no checkpoint") as info:
        _choose(tmp_path, _cfg("schedule.max_steps=30"), 30)  # cosine: the rates part right away
    assert len(info.value.problems) == 2 and "at step 1" in info.value.problems[0]
    with pytest.raises(UserError, match="made with other settings") as info:
        _choose(tmp_path, _cfg("schedule.max_steps=30", "optim.lr=1e-3"), 30)
    assert "optim.lr: 0.0002 -> 0.001" in info.value.problems
