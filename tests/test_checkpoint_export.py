"""`python -m pretrain export-checkpoint`: a checkpoint at step N becomes the folder a run of N steps
ends with (full: the same weights and config, RoPE scaling included; LoRA: the same adapter), without
ranks; bad input is refused. Also where `model.rope_scaling` is shown to reach training and final/."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers_train import REPO, _train, assets  # noqa: F401  (assets is a fixture)


def _export(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pretrain", "export-checkpoint", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _common(assets, *more: str) -> list[str]:
    # a constant rate: a run of N steps and a longer run's checkpoint at step N have seen the same rates
    return [f"model.path={assets['model']}", f"data.dir={assets['shards']}", "schedule.kind=constant",
            "eval.every_steps=0", "eval.at_start=false", "logging.wandb=disabled", "logging.tensorboard=false",
            "logging.plot=false", *more]


def _tensors(folder, name):
    return load_file(str(folder / name))


@pytest.mark.parametrize("mode, weights_file", [("full", "model.safetensors"), ("lora", "adapter_model.safetensors")])
def test_a_checkpoint_exports_as_the_final_folder_of_a_run_that_long(assets, mode, weights_file):
    root = assets["root"]
    longer, short, out = root / f"{mode}_longer", root / f"{mode}_short", root / f"{mode}_step2"
    # full: with a longer context too (position interpolation and a larger base), which the model folder must carry
    rope = ["model.rope_scaling={rope_type: linear, factor: 2, rope_theta: 40000}"] if mode == "full" else []
    proc = _train(*_common(assets, f"mode={mode}", "schedule.max_steps=6", "checkpoint.every_steps=2",
                           f"output_dir={longer}", *rope))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _train(*_common(assets, f"mode={mode}", "schedule.max_steps=2", f"output_dir={short}", *rope))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if rope:
        assert "[zhllama] context: RoPE linear x2, RoPE base 10,000 -> 40,000, positions 512 -> 1024" in proc.stdout
        config = json.loads((short / "final" / "config.json").read_text())
        assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2
        assert config["rope_parameters"]["rope_theta"] == 40000
        assert config["max_position_embeddings"] == 1024
        assert json.loads((longer / "final" / "config.json").read_text()) == config

    proc = _export(str(longer / "checkpoints" / "step-00000002"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"done: {out} (step 2 of 6, mode {mode})" in proc.stdout
    exported, final = _tensors(out, weights_file), _tensors(short / "final", weights_file)
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[k], final[k]) for k in final)
    assert not all(torch.equal(exported[k], _tensors(longer / "final", weights_file)[k]) for k in final)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # byte for byte, as final/ has them
        assert (out / name).read_bytes() == (short / "final" / name).read_bytes()
    if rope:  # the scaled positions the run trained with, not the base's
        assert json.loads((out / "config.json").read_text()) == json.loads((short / "final" / "config.json").read_text())
    report = json.loads((out / "train_report.json").read_text())
    assert report["step"] == 2 and report["from_checkpoint"].endswith("step-00000002")
    assert report["data"] == json.loads((short / "train_report.json").read_text())["data"]  # the card's data table
    assert "| continued pretraining | tiny | zh | test | 1.0 |" in (out / "README.md").read_text()
    if mode == "lora":  # the adapter names its base, as final/ does: `sft export` merges it the same way
        assert report["base_model_fingerprint"] == json.loads(
            (short / "final" / "train_report.json").read_text())["base_model_fingerprint"]
        config, expected = (json.loads((folder / "adapter_config.json").read_text()) for folder in (out, short / "final"))
        assert sorted(config.pop("target_modules")) == sorted(expected.pop("target_modules"))  # PEFT: a set
        assert config == expected

    proc = _export(str(longer / "checkpoints" / "step-00000002"), "--out", str(out))
    assert proc.returncode == 2 and "exists; pass --overwrite" in proc.stderr
    steps = [str(longer / "checkpoints" / f"step-0000000{n}") for n in (2, 4)]
    if mode == "lora":
        proc = _export(*steps, "--out", str(root / "lora_mean"))
        assert proc.returncode == 2 and "LoRA checkpoints do not average" in proc.stderr
        return
    # several checkpoints: the mean of their fp32 weights (checkpoint averaging)
    assert _export(steps[1], "--out", str(root / "step4")).returncode == 0
    proc = _export(*steps, "--out", str(root / "mean"))
    assert proc.returncode == 0 and "(the mean of steps 2 and 4, mode full)" in proc.stdout, proc.stderr[-3000:]
    at4, mean = _tensors(root / "step4", weights_file), _tensors(root / "mean", weights_file)
    assert all(torch.equal(mean[k], (exported[k] + at4[k]) / 2) for k in mean)
    assert [item["step"] for item in json.loads((root / "mean" / "train_report.json").read_text())["averaged"]] == [2, 4]


def test_checkpoints_of_different_models_do_not_average(tmp_path):
    from engine.checkpoint_export import _check_averageable
    from engine.config import TrainConfig
    from zhllama.config import load_config
    from zhllama.errors import UserError

    cfg = load_config(TrainConfig, None, ["model.path=m"])
    full = {"settings": {"model.path": "m", "mode": "full", "optim.lr": 1e-3}}
    other_lr = {"settings": {"model.path": "m", "mode": "full", "optim.lr": 1e-4}}  # other runs of one model: fine
    _check_averageable([tmp_path / "a", tmp_path / "b"], [full, other_lr], cfg)
    with pytest.raises(UserError, match="hold different models") as info:
        _check_averageable([tmp_path / "a", tmp_path / "b"], [full, {"settings": {"model.path": "n", "mode": "full"}}],
                           cfg)
    assert info.value.problems == ['model.path: "m" -> "n"']


def test_what_is_not_a_whole_checkpoint_is_refused(assets, tmp_path):
    proc = _export(str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "is not a complete checkpoint (no complete.json)" in proc.stderr
    broken = tmp_path / "step-00000002"
    broken.mkdir()
    (broken / "complete.json").write_text(json.dumps({"step": 2, "files": {"mp_rank_00_model_states.pt": 10}}))
    proc = _export(str(broken), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "is unusable (mp_rank_00_model_states.pt is missing)" in proc.stderr
    assert not (tmp_path / "out").exists()
