"""The GPU benchmark runs for real only on a lent GPU machine, minutes at a time: these keep every
piece of it runnable here, so a device call is never spent on a broken script.

The dry run checks each row produces a throughput (speed itself is never asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_device_script_without_wheels_stops_at_once_saying_what_to_do(tmp_path):
    env = {**os.environ, "WHEELS": str(tmp_path / "none"), "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "s")}
    proc = subprocess.run(["bash", "benchmarks/gpu_device_run.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "make gpu-wheels" in proc.stderr


def test_environment_report_names_versions_and_device():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_env.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("torch", "transformers", "peft", "deepspeed"):
        assert f"{name}: " in proc.stdout
    assert "device: " in proc.stdout


def test_gpu_wheel_list_pins_what_the_project_pins():
    pinned = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    wheels = dict(line.split("==") for line in (REPO / "benchmarks" / "gpu_wheels.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    for name in ("transformers", "peft"):
        assert wheels[name] == pinned[name]
    makefile = (REPO / "Makefile").read_text()
    assert f"deepspeed=={pinned['deepspeed']}" in makefile


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_bench")
    rows = ["engine full zero2", "engine lora zero3", "peer", "plain torch (sdpa"]
    proc = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", "--work", str(work), "--tiny", "--steps", "2",
                           "--warmup", "1", "--results", str(work / "results.json"), "--rows", *rows],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout


def test_dry_run_times_every_row_it_was_asked_for(dry_run):
    work, stdout = dry_run
    results = json.loads((work / "results.json").read_text())
    assert set(results["rows"]) == {"engine full zero2", "engine lora zero3",
                                    "peer: HF Trainer + DeepSpeed zero3 (no doc mask)", "plain torch (sdpa causal)"}
    for name, row in results["rows"].items():
        assert "error" not in row, (name, row.get("error"))
        assert row["tokens_per_s"] > 0 and row["steps"] == 2, (name, row)
        if name.startswith("engine"):  # the engine says which kernels it used (on the GPU: Liger? which attention?)
            assert "attention: sdpa (auto: no CUDA device)" in row["kernels"], row
    assert "vs peer" in stdout and "1.00x" in stdout  # the table, with the peer as its unit


def test_flops_per_token_counts_every_weight_but_the_input_embedding(dry_run):
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_throughput import flops_per_token

    work, _ = dry_run
    model_dir = work / "model-tiny"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    cfg = model.config
    assert flops_per_token(model_dir, 128) == 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * 128
