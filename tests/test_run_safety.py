"""The engine's decisions that keep a run from being silently wrong, tested as units (no ranks):
settings fingerprint and what a resume / "already finished" refuses, the choice of checkpoint
when the newest is broken, NaN/inf guards, all config problems at once, launcher death."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import checkpoint, guards, reshape, settings
from engine.config import TrainConfig
from zhllama.config import load_config
from zhllama.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _settings(*overrides: str, world: int = 2, data: str = "d1") -> dict:
    cfg = load_config(TrainConfig, None, ["model.path=m", *overrides])
    return settings.result_settings(cfg, world, data, "t1")


def test_settings_that_change_the_result_are_listed_and_others_are_not():
    base = _settings()
    assert settings.changes(base, _settings("logging.every_steps=3", "eval.every_steps=7", "checkpoint.keep_last=5",
                                            "output_dir=elsewhere", "model.gradient_checkpointing=true")) == []
    assert settings.changes(base, _settings("optim.lr=1e-3")) == ["optim.lr: 0.0002 -> 0.001"]
    changed = settings.changes(base, _settings("mode=lora", "schedule.max_steps=9", "seed=1", world=4))
    assert changed == ["mode: \"full\" -> \"lora\"", "schedule.max_steps: 0 -> 9", "seed: 42 -> 1", "world_size: 2 -> 4"]
    assert settings.fingerprint(base) == settings.fingerprint(_settings("logging.every_steps=3"))
    assert settings.fingerprint(base) != settings.fingerprint(_settings("batch.micro_batch_size=2"))
    assert json.loads(json.dumps(base)) == base  # what is stored is what is compared


def test_a_setting_added_later_at_its_old_behaviour_does_not_block_a_resume():
    from sft.config import SFTConfig

    current = settings.result_settings(load_config(SFTConfig, None, ["model.path=m", "data.files=[{path: x}]"]),
                                       2, "d1", "t1")
    recorded_before = {k: v for k, v in current.items()
                       if k not in ("objective", "model.neftune_alpha") and not k.startswith("dpo.")}
    assert settings.changes(recorded_before, current) == []
    settings.check_same("checkpoint X", recorded_before, current)
    dpo = settings.result_settings(load_config(SFTConfig, None, ["model.path=m", "data.files=[{path: x}]",
                                                                 "objective=dpo", "model.neftune_alpha=5"]), 2, "d1", "t1")
    assert settings.changes(recorded_before, dpo) == ['model.neftune_alpha: "<unset>" -> 5.0',
                                                      'objective: "<unset>" -> "dpo"']
    assert set(settings.ADDED_LATER) <= set(current)  # every listed key is a real setting


def test_check_same_refuses_with_every_change_and_accepts_old_outputs():
    base = _settings()
    with pytest.raises(UserError, match="made with other settings") as info:
        settings.check_same("checkpoint X", base, _settings("optim.lr=1e-3", "mode=lora"))
    assert info.value.problems == ["mode: \"full\" -> \"lora\"", "optim.lr: 0.0002 -> 0.001"]
    with pytest.raises(UserError, match="was trained on other data"):
        settings.check_same("checkpoint X", base, _settings(data="d2"))
    settings.check_same("checkpoint X", None, base)  # written before settings were recorded
    settings.check_same("checkpoint X", base, _settings("logging.every_steps=3"))


def _checkpoint(root: Path, step: int, marker: dict | str | None, files: dict[str, bytes]) -> Path:
    folder = checkpoint.checkpoints_dir(root) / checkpoint.tag_for(step)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if marker is not None:
        text = marker if isinstance(marker, str) else json.dumps(marker)
        (folder / checkpoint.MARKER).write_text(text)
    return folder


def test_resume_falls_back_past_a_truncated_or_garbage_newest_checkpoint(tmp_path, capsys):
    good = _checkpoint(tmp_path, 4, {"step": 4, "world_size": 1, "files": {"model.pt": 6}}, {"model.pt": b"abcdef"})
    _checkpoint(tmp_path, 8, {"step": 8, "world_size": 1, "files": {"model.pt": 6}}, {"model.pt": b"abc"})
    _checkpoint(tmp_path, 12, "{not json", {"model.pt": b"abcdef"})
    assert checkpoint.find_resume(tmp_path, "auto") == good
    err = capsys.readouterr().err
    assert "step-00000012" in err and "unreadable" in err and "step-00000008" in err and "truncated" in err
    assert "resuming from step-00000004 instead" in err
    with pytest.raises(UserError, match=r"checkpoint.resume: .*step-00000008 is unusable \(model.pt has 3 bytes, 6"):
        checkpoint.find_resume(tmp_path, str(checkpoint.checkpoints_dir(tmp_path) / "step-00000008"))
    (good / "model.pt").unlink()
    with pytest.raises(UserError, match=r"no checkpoint in .* can be resumed: .*model.pt is missing"):
        checkpoint.find_resume(tmp_path, "auto")


def test_resume_refuses_a_checkpoint_made_with_other_settings(tmp_path):
    old = _settings(world=1)
    folder = _checkpoint(tmp_path, 4, {"step": 4, "world_size": 1, "data_fingerprint": "d1", "settings": old}, {})
    assert checkpoint.check_resumable(folder, 1, "d1", _settings("eval.every_steps=2", world=1)) == (
        {"step": 4, "world_size": 1, "data_fingerprint": "d1", "settings": old}, None)
    with pytest.raises(UserError, match="made with other settings") as info:
        checkpoint.check_resumable(folder, 1, "d1", _settings("mode=lora", world=1))  # was a PEFT traceback
    assert info.value.problems == ["mode: \"full\" -> \"lora\""]


def test_resume_on_other_ranks_must_keep_micro_and_global_batch(tmp_path):
    old = _settings("batch.micro_batch_size=2", "batch.gradient_accumulation_steps=2", world=2)
    folder = _checkpoint(tmp_path, 4, {"step": 4, "world_size": 2, "data_fingerprint": "d1", "settings": old}, {})
    same_global = _settings("batch.micro_batch_size=2", "batch.gradient_accumulation_steps=4",
                            "batch.global_batch_size=8", world=1)
    marker, reshaped = checkpoint.check_resumable(folder, 1, "d1", same_global)
    assert marker["step"] == 4 and reshaped == reshape.Reshape(2, 1, 2, 4)
    assert reshaped.describe() == "2 ranks x 2 accumulation steps -> 1 x 4"
    with pytest.raises(UserError, match=r"global batch 8; this run has 1 x 2 x 2 = 4\..*"
                                        r"set batch.micro_batch_size=2 batch.gradient_accumulation_steps=4"):
        checkpoint.check_resumable(folder, 1, "d1", _settings("batch.micro_batch_size=2",
                                                                "batch.gradient_accumulation_steps=2", world=1))
    with pytest.raises(UserError, match=r"4 micro batches per step cannot be shared by 3 ranks; use one of \[1, 2, 4\]"):
        checkpoint.check_resumable(folder, 3, "d1", _settings("batch.micro_batch_size=2", world=3))
    with pytest.raises(UserError, match="must keep the micro batch"):  # same global batch, other micro batches
        checkpoint.check_resumable(folder, 1, "d1", _settings("batch.micro_batch_size=4",
                                                                "batch.gradient_accumulation_steps=2", world=1))
    with pytest.raises(UserError, match="made with other settings") as info:  # any other change is still refused
        checkpoint.check_resumable(folder, 1, "d1", _settings("batch.micro_batch_size=2", "optim.lr=1e-3",
                                                                "batch.gradient_accumulation_steps=4", world=1))
    assert info.value.problems == ["optim.lr: 0.0002 -> 0.001"]


def test_a_checkpoint_inside_a_grpo_group_resumes_only_on_its_number_of_ranks(tmp_path):
    """Its answers to train on again are kept per rank and micro batch; a group's first step has none."""
    folder = tmp_path / "step-00000005"
    checkpoint.check_reshape_at_group_start(folder, {"step": 6, "world_size": 2}, 2, 1)
    checkpoint.check_reshape_at_group_start(folder, {"step": 5, "world_size": 2}, 1, 1)
    with pytest.raises(UserError, match=r"step 5\) is inside a group of 2 steps .* its 2 ranks kept; resume it on as "
                                        r"many ranks, or resume from a checkpoint at a multiple of 2 steps on 1"):
        checkpoint.check_reshape_at_group_start(folder, {"step": 5, "world_size": 2}, 2, 1)


def test_a_checkpoint_that_cannot_be_converted_is_named_and_leaves_nothing_behind(tmp_path):
    folder = _checkpoint(tmp_path, 4, {"step": 4, "world_size": 2}, {"zero_pp_rank_0_mp_rank_00_optim_states.pt": b"x"})
    (folder / reshape.UNIVERSAL).mkdir()  # a conversion by hand that stopped half-way
    assert not reshape._converted(folder / reshape.UNIVERSAL / folder.name)
    with pytest.raises(UserError, match=r"could not convert checkpoint .*step-00000004 for another number of ranks "
                                        r"\(deepspeed.checkpoint.ds_to_universal exited 1\)"):
        reshape._convert(folder, folder / reshape.UNIVERSAL)
    assert sorted(p.name for p in folder.iterdir()) == ["complete.json", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]


def test_a_finished_run_is_not_returned_for_new_settings(tmp_path):
    from engine.loop import _finished_report

    cfg = load_config(TrainConfig, None, ["model.path=m", f"output_dir={tmp_path}"])
    mine = settings.result_settings(cfg, 1, "d1", None)
    (tmp_path / "final").mkdir()
    (tmp_path / "train_report.json").write_text(json.dumps({"step": 6, "data_fingerprint": "d1", "settings": mine}))
    assert _finished_report(cfg, 6, "d1", mine)["step"] == 6
    changed = load_config(TrainConfig, None, ["model.path=m", f"output_dir={tmp_path}", "optim.lr=1e-3"])
    with pytest.raises(UserError, match=r"the finished run in .* was made with other settings") as info:
        _finished_report(changed, 6, "d1", settings.result_settings(changed, 1, "d1", None))
    assert info.value.problems == ["optim.lr: 0.0002 -> 0.001"]
    two_ranks = settings.result_settings(cfg, 2, "d1", None)  # the same run finished on 2 ranks
    (tmp_path / "train_report.json").write_text(json.dumps({"step": 6, "data_fingerprint": "d1", "settings": two_ranks}))
    one_rank = load_config(TrainConfig, None, ["model.path=m", f"output_dir={tmp_path}",
                                               "batch.gradient_accumulation_steps=2"])
    assert _finished_report(one_rank, 6, "d1", settings.result_settings(one_rank, 1, "d1", None))["step"] == 6
    with pytest.raises(UserError, match="must keep the micro batch and the global batch"):
        _finished_report(cfg, 6, "d1", mine)


def test_loss_guard_names_the_first_non_finite_step():
    guard = guards.LossGuard()
    guard.check()  # nothing seen yet
    for step, value in ((1, 2.0), (2, 1.5), (3, float("nan")), (4, float("inf")), (5, 1.0)):
        guard.observe(torch.tensor(value), step)
    with pytest.raises(UserError, match=r"non-finite \(NaN/inf\) at step 3;"):
        guard.check()
    fine = guards.LossGuard()
    fine.observe(torch.tensor(0.5), 1)
    fine.check()
    with pytest.raises(UserError, match=r"gradient norm became non-finite \(inf\) at step 7"):
        guards.check_grad_norm(float("inf"), 7)
    guards.check_grad_norm(None, 7)
    guards.check_grad_norm(3.0, 7)


def test_non_finite_weights_are_named_and_never_saved():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    guards.check_weights(model, "checkpoint")
    with torch.no_grad():
        model[1].weight[0, 1] = float("nan")
    with pytest.raises(UserError, match=r"checkpoint: the model's weights hold non-finite .*1.weight \(1 of 4 values\)"):
        guards.check_weights(model, "checkpoint")
    state = {"a": torch.ones(3), "ids": torch.tensor([1, 2]), "b": torch.tensor([1.0, float("-inf")])}
    with pytest.raises(UserError, match=r"out/final: not saved, the final weights .*b \(1 of 2 values\)"):
        guards.check_state_dict(state, "out/final")
    guards.check_state_dict({"a": torch.ones(2)}, "out/final")


def test_config_reports_type_and_range_problems_in_one_run():
    bad = ["optim.lr=abc", "optim.betas=[2,3]", "mode=qlora", "batch.micro_batch_size=0", "schedule.max_steps=-1",
           "schedule.kind=step", "logging.every_steps=0", "checkpoint.keep_last=0", "lora.r=0", "eval.every_steps=x",
           "schedule.min_lr_ratio=2", "optim.max_grad_norm=-1", "nosuch=1"]
    with pytest.raises(UserError) as info:
        load_config(TrainConfig, None, ["model.path=m", *bad])
    keys = {p.split(":")[0].split(" ")[0] for p in info.value.problems}
    expected = {"optim.lr", "optim.betas", "mode", "batch.micro_batch_size", "schedule.max_steps", "schedule.kind",
                "logging.every_steps", "checkpoint.keep_last", "lora.r", "eval.every_steps", "schedule.min_lr_ratio",
                "optim.max_grad_norm", "nosuch"}
    assert expected <= keys, sorted(keys)


def test_a_folder_given_as_the_config_file_says_so(tmp_path):
    with pytest.raises(UserError, match=r"config file .* is a directory, expected a file"):
        load_config(TrainConfig, tmp_path)


def test_an_unwritable_output_dir_is_one_line(tmp_path, monkeypatch):
    import errno

    from zhllama.files import check_writable_dir

    check_writable_dir(tmp_path / "ok", "output_dir")
    assert list((tmp_path / "ok").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="output_dir .*file is a file, expected a folder"):
        check_writable_dir(tmp_path / "file", "output_dir")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("zhllama.files.open", full, raising=False)
    with pytest.raises(UserError, match=r"output_dir .*cannot write there: No space left on device"):
        check_writable_dir(tmp_path / "full", "output_dir")


_RANK = """
import os, sys, time
os.environ.update(RANK="0")
from engine.dist import die_with_parent
assert die_with_parent()
print(os.getpid(), flush=True)
time.sleep(120)
"""
_LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=sys.stdout)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_ranks_end_when_their_launcher_is_killed():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _RANK], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                text=True)
    try:
        rank = int(launcher.stdout.readline())
        launcher.send_signal(signal.SIGKILL)  # no cleanup: only the kernel can tell the rank
        launcher.wait()
        deadline = time.time() + 30
        while time.time() < deadline and _alive(rank):
            time.sleep(0.1)
        assert not _alive(rank), "the rank outlived its launcher"
    finally:
        launcher.kill()


_SIGNALLED = """
import os, signal, sys
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
import torch.distributed as dist
from engine import stop_signals
dist.init_process_group("gloo")
with stop_signals.StopSignals(["SIGUSR1", "SIGTERM"]).installed() as stop:
    print("before:", stop.any_rank_received(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # the same event twice (a launcher's death can do that)
    print("after:", stop.any_rank_received(), flush=True)
    stop_signals.REPEAT_AFTER_S = 0.0
    os.kill(os.getpid(), signal.SIGUSR1)  # asked again, later: die as if never caught
    print("still alive", flush=True)
"""


def test_a_stop_signal_is_noted_for_the_step_end_and_a_second_one_kills():
    from helpers_dist import free_port

    proc = subprocess.run([sys.executable, "-c", _SIGNALLED, str(free_port())], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.splitlines() == ["before: None", "after: SIGTERM"], proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == -signal.SIGUSR1


def test_a_stopped_run_exits_75_saying_why(capsys):
    from zhllama.errors import Stopped, run_cli

    def stopped():
        raise Stopped("SIGTERM at step 6: checkpoint step-00000006 saved; run the same command to resume")

    with pytest.raises(SystemExit) as info:
        run_cli(stopped)
    assert info.value.code == 75
    assert capsys.readouterr().err == "stopped: SIGTERM at step 6: checkpoint step-00000006 saved; run the same command to resume\n"


def test_stop_signals_are_checked_with_the_config():
    with pytest.raises(UserError, match="2 problems") as info:
        load_config(TrainConfig, None, ["model.path=m", "checkpoint.stop_signals=[SIGTERM,SIGKILL,TERM]"])
    assert info.value.problems == [
        "checkpoint.stop_signals: SIGKILL cannot be caught, so no checkpoint can be saved on it",
        "checkpoint.stop_signals: 'TERM' is not a signal name (e.g. SIGTERM, SIGUSR1)"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sequences_longer_than_the_models_positions_are_refused_unless_rope_is_scaled(tmp_path):
    from engine.model import check_sequence_length

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    cfg = load_config(TrainConfig, None, [f"model.path={tmp_path}"])
    check_sequence_length(cfg, 64)
    check_sequence_length(cfg, None)
    with pytest.raises(UserError, match=r"sequences are 128 tokens but .* at most 64 positions .*--block-size <= 64"):
        check_sequence_length(cfg, 128)
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64,
                                                      "rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    check_sequence_length(cfg, 128)
    # transformers 5 writes rope_parameters (was refused: only rope_scaling was read); "default" scales nothing
    for rope_type, fits in (("yarn", True), ("default", False)):
        (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64, "rope_parameters": {
            "rope_type": rope_type, "factor": 4.0, "rope_theta": 10000.0}}))
        if fits:
            check_sequence_length(cfg, 256)
        else:
            with pytest.raises(UserError, match=r"or extend the context: model.rope_scaling=\{rope_type: linear, "
                                                r"factor: 4\}"):
                check_sequence_length(cfg, 256)
    # this run's scaling: the model's positions times the factor, or the length given
    scaled = load_config(TrainConfig, None, [f"model.path={tmp_path}", "model.rope_scaling={rope_type: linear, factor: 2}"])
    check_sequence_length(scaled, 128)
    with pytest.raises(UserError, match="covers at most 128 positions"):
        check_sequence_length(scaled, 129)
    longer = load_config(TrainConfig, None, [f"model.path={tmp_path}", "model.max_position_embeddings=200"])
    check_sequence_length(longer, 200)


def test_a_larger_rope_base_alone_extends_the_context_to_the_length_given(tmp_path):
    """Adjusted base frequency (Code Llama, Llama 3): {rope_theta: N} with max_position_embeddings; the model built
    rotates with the new base and keeps its own rope_type."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from engine.context import describe
    from engine.model import check_sequence_length
    from zhllama.rope import scaled_config, validate

    assert validate({"rope_theta": 1e6}, 4096) == []
    assert validate({"rope_type": "yarn", "factor": 4, "rope_theta": 1e6}, None) == []
    problems = " ".join(validate({"rope_theta": 1e6, "factor": 2}, None) + validate({"rope_theta": -1}, 64))
    assert "set model.max_position_embeddings to the length trained for" in problems
    assert "rope_scaling.factor: not with a new rope_theta alone" in problems
    assert "rope_scaling.rope_theta: a number > 0" in problems
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64)).save_pretrained(tmp_path)
    config = scaled_config(str(tmp_path), {"rope_theta": 1e6}, 256)
    assert config.rope_parameters["rope_theta"] == 1e6 and config.rope_parameters["rope_type"] == "default"
    assert config.max_position_embeddings == 256
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), config=config)
    head_dim = 8
    expected = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected)
    run = load_config(TrainConfig, None, [f"model.path={tmp_path}", "model.rope_scaling={rope_theta: 1000000}",
                                          "model.max_position_embeddings=256"])
    check_sequence_length(run, 256)
    with pytest.raises(UserError, match="covers at most 256 positions"):
        check_sequence_length(run, 257)
    assert describe(str(tmp_path), {"rope_theta": 1e6}, 256) == "context: RoPE base 10,000 -> 1,000,000, positions 64 -> 256"
    with pytest.raises(UserError, match="set model.max_position_embeddings"):
        load_config(TrainConfig, None, [f"model.path={tmp_path}", "model.rope_scaling={rope_theta: 1000000}"])


def test_bad_rope_scaling_is_refused_with_the_other_problems():
    with pytest.raises(UserError) as info:
        load_config(TrainConfig, None, ["model.path=m", "model.rope_scaling={rope_type: bogus, factor: 0.5}",
                                        "model.max_position_embeddings=0"])
    text = str(info.value)
    assert "rope_scaling.rope_type: one of linear, yarn, got 'bogus'" in text
    assert "rope_scaling.factor: a number > 1 (how many times longer), got 0.5" in text
    assert "max_position_embeddings: must be >= 1, got 0" in text


def test_a_full_disk_while_saving_is_one_line_naming_the_output_dir():
    import errno

    from engine.loop import _writing

    cfg = load_config(TrainConfig, None, ["model.path=m", "output_dir=/data/run"])
    with pytest.raises(UserError, match=r"^output_dir /data/run: cannot write checkpoint step 8: No space left on "
                                        r"device \(/data/run/checkpoints/x.pt\)$"):
        with _writing(cfg, "checkpoint step 8"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/checkpoints/x.pt")
