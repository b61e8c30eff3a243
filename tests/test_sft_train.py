"""`sft train` on the shared engine: a real 2-rank ZeRO-3 CPU run whose loss falls, exported after;
malformed data stops the run before training; every shipped config and SFT manifest loads."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_sft import ZH_RECORDS, tiny_model, tiny_tokenizer, write_json

from sft.config import SFTConfig
from zhllama.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "sft" / "configs" / "tiny_cpu.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore::FutureWarning"}


def _overrides(root: Path, model: Path, data: Path, out: Path) -> list[str]:
    return [f"model.path={model}", f"output_dir={out}", f"data.cache_dir={root / 'cache'}",
            f"data.files=[{{path: '{data}', weight: 4.0}}]", "data.eval_fraction=0.0", "data.max_seq_length=256",
            "schedule.max_steps=10", "data.template=chinese-alpaca-2", "checkpoint.every_steps=5"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_run")
    model = tiny_model(root / "model", tiny_tokenizer(root / "tok"), hidden=32)
    data = write_json(root / "zh.json", ZH_RECORDS)
    out = root / "run"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "sft", "train",
           "--config", str(TINY_CONFIG), *_overrides(root, model, data, out)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return root, model, out, proc.stdout + proc.stderr


@pytest.mark.distributed  # sft_run launches torchrun with 2 ranks
def test_two_rank_zero3_sft_loss_falls(sft_run):
    _, _, out, log = sft_run
    losses = [r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "train/loss" in r]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    report = json.loads((out / "train_report.json").read_text())
    assert report["world_size"] == 2 and len(set(report["zero3_partition_numel"])) >= 1
    final = out / "final"
    assert (final / "adapter_config.json").is_file() and (final / "sft_template.json").is_file()
    assert json.loads((final / "sft_template.json").read_text())["name"] == "chinese-alpaca-2"
    data_report = json.loads((out / "sft_data_report.json").read_text())
    assert data_report["train_samples"] == 4 * len(ZH_RECORDS) and "[sft] data:" in log


@pytest.mark.distributed  # sft_run launches torchrun with 2 ranks
def test_export_of_the_trained_run_matches_the_adapter(sft_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft.export import export_merged

    root, model_dir, out, _ = sft_run
    report = export_merged(model_dir, out, root / "merged")
    assert report.kind == "lora-merge" and report.resized_base_to is None
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
                                        str(out / "final")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(root / "merged"), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 17, 200, 300, 411, 2]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.distributed  # sft_run launches torchrun with 2 ranks
def test_a_checkpoint_exports_with_the_template_the_run_trained_with(sft_run):
    """Gathered from 2 ranks' ZeRO-3 shards (the values are checked bit for bit on 1 rank in
    test_checkpoint_export.py); the folder formats prompts as final/ does, and merges as it does."""
    from safetensors.torch import load_file

    root, model_dir, out, _ = sft_run
    step5, folder = out / "checkpoints" / "step-00000005", root / "step5"
    proc = subprocess.run([sys.executable, "-m", "pretrain", "export-checkpoint", str(step5), "--out", str(folder)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "use python -m sft export-checkpoint" in proc.stderr, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "sft", "export-checkpoint", str(step5), "--out", str(folder)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = out / "final"
    for name in ("sft_template.json", "tokenizer_config.json", "tokenizer.json"):
        assert (folder / name).read_bytes() == (final / name).read_bytes(), name
    exported, trained = (load_file(str(f / "adapter_model.safetensors")) for f in (folder, final))
    assert exported.keys() == trained.keys()
    lora_b = [k for k in exported if "lora_B" in k]
    assert lora_b and all(exported[k].abs().sum() > 0 for k in lora_b)  # trained away from PEFT's zeros
    assert not all(torch.equal(exported[k], trained[k]) for k in trained)  # step 5, not step 10
    proc = subprocess.run([sys.executable, "-m", "sft", "export", "--base", str(model_dir), "--adapter", str(folder),
                           "--out", str(root / "step5_merged")], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((root / "step5_merged" / "sft_template.json").read_text())["name"] == "chinese-alpaca-2"


def test_malformed_record_stops_before_training(tmp_path):
    bad = write_json(tmp_path / "bad.json", [ZH_RECORDS[0], {"instruction": "没有输出"}, ZH_RECORDS[1],
                                            {"instruction": "类型错", "output": ["列表"]}])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sft", "train", "--config", str(TINY_CONFIG), "model.path=/nonexistent",
           f"output_dir={out}", f"data.files=[{{path: '{bad}'}}]", f"data.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{bad}: record 2: missing `output`" in proc.stderr
    assert f"{bad}: record 4: `output` must be a string, got list" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("path", sorted((REPO / "sft" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(SFTConfig, path)
    assert cfg.data.template in ("alpaca", "chinese-alpaca", "chinese-alpaca-2", "tokenizer")
    if cfg.data.manifest:
        assert (REPO / cfg.data.manifest).is_file()


@pytest.mark.parametrize("path", sorted((REPO / "corpora_manifests").glob("sft_*.yaml")), ids=lambda p: p.name)
def test_sft_manifests_validate_and_parse(path, shared_data, tmp_path):
    from sft.config import SFTData
    from sft.mixture import read_and_validate, resolve_sources

    sources = resolve_sources(SFTData(manifest=str(path)))
    parsed = read_and_validate(sources)
    assert all(len(convs) > 100 for convs, _, _, _ in parsed)
    assert any(any(held) for _, _, held, _ in parsed)  # the manifest's holdout gives an eval split
    assert not any(any(excluded) for _, _, _, excluded in parsed)  # no exclude: in the shipped manifests
