"""`python -m pretrain train` end to end on real prepared shards, and its bad-input messages.

Single process (a 1-rank gloo group with ZeRO-3): the 2-rank behaviours are in
test_engine_distributed.py. Shards come from the real `pretrain.prepare` on a tiny corpus.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import checkpoint
from helpers_train import REPO, TINY, _train, assets  # noqa: F401  (assets is a fixture)


def test_single_process_cli_trains_on_prepared_shards_and_stages_chain(assets):
    out = assets["root"] / "run"
    (assets["model"] / "README.md").write_text("---\nlicense: apache-2.0\n---\n# the base\n")  # its card's licence
    proc = _train(f"model.path={assets['model']}", f"data.dir={assets['shards']}", f"output_dir={out}",
                  "schedule.max_steps=6", "eval.every_steps=3", "checkpoint.every_steps=2", "logging.wandb=disabled",
                  "logging.tensorboard=false", "mode=embeddings")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "done:" in proc.stdout
    report = json.loads((out / "train_report.json").read_text())
    from engine.packed import PackedDataset

    train_ds = PackedDataset(assets["shards"], "train")
    assert report["data_fingerprint"] == train_ds.cache_key and report["world_size"] == 1
    assert report["metrics"]["eval/bits_per_char"] > 0  # characters recorded by prepare
    assert report["metrics"]["eval/tokens"] == PackedDataset(assets["shards"], "validation").labelled_tokens
    marker = json.loads((out / "checkpoints" / "step-00000004" / "complete.json").read_text())
    assert marker["data_fingerprint"] == train_ds.cache_key
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.vocab_size == 512

    # The same command again (a scheduler restarting a finished job): nothing to redo.
    proc = _train(f"model.path={assets['model']}", f"data.dir={assets['shards']}", f"output_dir={out}",
                  "schedule.max_steps=6", "eval.every_steps=3", "checkpoint.every_steps=2", "logging.wandb=disabled",
                  "logging.tensorboard=false", "mode=embeddings")
    assert proc.returncode == 0 and "already finished 6 steps" in proc.stdout, proc.stderr[-3000:]

    # Same output folder, other data: refused instead of silently continuing.
    proc = _train(f"model.path={assets['model']}", f"data.dir={assets['more_shards']}", f"output_dir={out}",
                  "schedule.max_steps=6", "eval.every_steps=3", "logging.wandb=disabled")
    assert proc.returncode == 2 and "was trained on other data" in proc.stderr, proc.stderr[-3000:]

    # Stage 2 starts from stage 1's output folder (Chinese-LLaMA: embeddings, then LoRA).
    stage2 = assets["root"] / "stage2"
    proc = _train(f"model.path={out / 'final'}", f"data.dir={assets['shards']}", f"output_dir={stage2}",
                  "mode=lora", "schedule.max_steps=2", "eval.every_steps=0", "eval.at_start=false",
                  "checkpoint.every_steps=0", "logging.wandb=disabled", "logging.tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter = json.loads((stage2 / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(out / "final")

    # A LoRA run is not a model: training on from it says how to merge it, and the merge of a
    # pretraining run is a base model (no chat template to advertise), ready for SFT.
    proc = _train(f"model.path={stage2}", f"data.dir={assets['shards']}", f"output_dir={assets['root'] / 'stage3'}")
    assert proc.returncode == 2 and "holds a LoRA adapter, not a whole model" in proc.stderr, proc.stderr[-3000:]
    assert f"python -m sft export --base BASE --adapter {stage2}" in proc.stderr
    merged = assets["root"] / "stage2_merged"
    proc = subprocess.run([sys.executable, "-m", "sft", "export", "--base", str(out / "final"), "--adapter",
                           str(stage2), "--out", str(merged)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((merged / "export_report.json").read_text())
    assert report["template"] is None and any("a pretraining run" in note for note in report["notes"])
    assert not (merged / "sft_template.json").exists()
    assert "chat_template" not in json.loads((merged / "tokenizer_config.json").read_text())
    _check_cards(assets["model"], out / "final", stage2 / "final", merged)


def _front(card: Path) -> dict:
    import yaml

    return yaml.safe_load(card.read_text().split("---")[1])


def _check_cards(base: Path, stage1: Path, stage2: Path, merged: Path) -> None:
    """Every result folder has a card written from its reports: licence of the base, data sources, lineage."""
    from zhllama.model_card import lineage_of

    first = (stage1 / "README.md").read_text()
    assert _front(stage1 / "README.md")["license"] == "apache-2.0"
    assert _front(stage1 / "README.md")["library_name"] == "transformers" and "pretrain" in _front(stage1 / "README.md")["tags"]
    assert "| continued pretraining | tiny | zh | test | 1.0 |" in first and "mode `embeddings`, 6 steps" in first
    assert _front(stage2 / "README.md")["library_name"] == "peft" and "python -m sft export" in (stage2 / "README.md").read_text()
    steps = lineage_of(merged)
    assert [(s["kind"], s.get("mode")) for s in steps] == [("train", "embeddings"), ("train", "lora"), ("merge", None)]
    assert steps[0]["base_model"] == str(base) and steps[1]["base_model"] == str(stage1)
    card = (merged / "README.md").read_text()
    assert card.index("mode `embeddings`") < card.index("mode `lora`") < card.index("merged into")
    assert _front(merged / "README.md")["license"] == "apache-2.0"  # from the first base, through the lineage


def test_a_longer_wsd_run_continues_from_the_start_of_the_old_decay(assets):
    """Continued pretraining's way to train longer: the same command with a larger max_steps goes on from
    the checkpoint before the old decay and ends with the weights of the longer run planned from the start."""
    import torch
    from safetensors.torch import load_file

    root = assets["root"]
    common = [f"model.path={assets['model']}", f"data.dir={assets['shards']}", "schedule.kind=wsd",
              "schedule.decay_fraction=0.5", "eval.every_steps=0", "eval.at_start=false", "logging.wandb=disabled",
              "logging.tensorboard=false", "logging.plot=false", "checkpoint.every_steps=2", "checkpoint.keep_last=1"]
    out, planned = root / "wsd", root / "wsd_planned"
    proc = _train(*common, "schedule.max_steps=6", f"output_dir={out}")  # decays after step 3
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = [p.name for p in checkpoint.list_complete(out)]
    assert kept == ["step-00000003", "step-00000004"]  # step 3 outlives keep_last=1: the decay starts after it
    assert json.loads((out / "checkpoints" / "step-00000003" / "complete.json").read_text())["kept"]
    short_final = load_file(str(out / "final" / "model.safetensors"))

    proc = _train(*common, "schedule.max_steps=10", f"output_dir={out}")  # decays after step 5
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the schedule changed (6 -> 10 steps); step-00000003 was trained with this run's" in proc.stdout
    aside = out / "superseded" / "from-step-00000003"
    assert sorted(p.name for p in aside.iterdir()) == ["final", "step-00000004", "train_report.json"]
    assert load_file(str(aside / "final" / "model.safetensors")).keys() == short_final.keys()
    proc = _train(*common, "schedule.max_steps=10", f"output_dir={planned}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    longer, uninterrupted = (load_file(str(folder / "final" / "model.safetensors")) for folder in (out, planned))
    assert all(torch.equal(longer[k], uninterrupted[k]) for k in uninterrupted)
    assert not all(torch.equal(longer[k], short_final[k]) for k in short_final)
    proc = _train(*common, "schedule.max_steps=10", f"output_dir={out}")
    assert proc.returncode == 0 and "already finished 10 steps" in proc.stdout, proc.stderr[-3000:]
    # a branch in another folder (e.g. a cooldown of a run that goes on): the same weights
    branch = root / "wsd_branch"
    proc = _train(*common, "schedule.max_steps=10", f"output_dir={branch}",
                  f"checkpoint.resume={out / 'checkpoints' / 'step-00000003'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    branched = load_file(str(branch / "final" / "model.safetensors"))
    assert all(torch.equal(branched[k], uninterrupted[k]) for k in uninterrupted)

    proc = _train(*common, "schedule.kind=cosine", "schedule.max_steps=12", f"output_dir={out}")
    assert proc.returncode == 2 and "the schedule changed, and no checkpoint" in proc.stderr, proc.stderr[-3000:]
    for folder in checkpoint.list_complete(out):  # a finished run with no checkpoints is never overwritten
        shutil.rmtree(folder)
    proc = _train(*common, "schedule.max_steps=12", f"output_dir={out}")
    assert proc.returncode == 2 and "has another schedule and no checkpoint to continue from" in proc.stderr


def test_refuses_data_prepared_with_another_tokenizer(assets):
    proc = _train(f"model.path={assets['model']}", f"data.dir={assets['other_shards']}",
                  f"output_dir={assets['root'] / 'refused'}", "logging.wandb=disabled")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "prepared with another tokenizer" in proc.stderr and "python -m pretrain prepare" in proc.stderr
    assert not (assets["root"] / "refused" / "final").exists()


def _model_with(assets, name: str, edit) -> Path:
    """A copy of the tiny model with ``edit(state_dict)`` applied (e.g. a NaN planted)."""
    from safetensors.torch import load_file, save_file

    folder = assets["root"] / name
    if not folder.exists():
        shutil.copytree(assets["model"], folder)
        state = load_file(str(folder / "model.safetensors"))
        edit(state)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_new_settings_are_refused_and_non_finite_values_stop_the_run(assets):
    """Was: exit 0 "already finished" with the old model, a PEFT traceback on resume into lora, and a
    model with NaN weights trained on and exported while the loss looked normal."""
    from engine.packed import PackedDataset

    root = assets["root"]
    out = root / "guarded"
    common = [f"model.path={assets['model']}", f"data.dir={assets['shards']}", "schedule.max_steps=4",
              "eval.every_steps=0", "eval.at_start=false", "logging.wandb=disabled", "logging.tensorboard=false",
              "logging.plot=false", "checkpoint.every_steps=2"]
    proc = _train(*common, f"output_dir={out}", "model.attn_implementation=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "train_report.json").read_text())
    assert report["settings"]["optim.lr"] == 3e-3 and len(report["settings_fingerprint"]) == 64
    # auto is recorded as what it chose here, so a resume where it would choose another kernel is refused
    assert report["settings"]["model.attn_implementation"] == "sdpa"
    assert "attention: sdpa (auto: no CUDA device)" in proc.stdout

    proc = _train(*common, f"output_dir={out}", "optim.lr=1e-2")  # a finished run, a new lr
    assert proc.returncode == 2 and "already finished" not in proc.stdout, proc.stdout[-2000:]
    assert "was made with other settings" in proc.stderr and "optim.lr: 0.003 -> 0.01" in proc.stderr
    proc = _train(*common, f"output_dir={out}", "logging.every_steps=2")  # cannot change the result: allowed
    assert proc.returncode == 0 and "already finished 4 steps" in proc.stdout, proc.stderr[-3000:]

    # A crash after the step-2 checkpoint, then a resume in another mode: refused before PEFT is touched.
    shutil.rmtree(out / "final")
    (out / "train_report.json").unlink()
    proc = _train(*common, f"output_dir={out}", "mode=lora")
    assert proc.returncode == 2 and 'mode: "full" -> "lora"' in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    def nan_norm(state):
        state["model.layers.0.input_layernorm.weight"][0] = float("nan")

    proc = _train(*common, f"model.path={_model_with(assets, 'nan_norm', nan_norm)}", f"output_dir={root / 'nan1'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the loss became non-finite (NaN/inf) at step 1" in proc.stderr and "Traceback" not in proc.stderr
    line = next(text for text in proc.stderr.split("\n") if "the loss became non-finite" in text)
    assert "train:" not in line, line  # on a line of its own, not glued onto the progress bar's
    assert not (root / "nan1" / "final").exists() and not (root / "nan1" / "checkpoints").exists()

    used = set()
    train_ds = PackedDataset(assets["shards"], "train")
    for i in range(len(train_ds)):
        used.update(train_ds[i]["input_ids"].tolist())
    unused = max(set(range(512)) - used)

    def nan_row(state):  # a row no training token reads: the loss stays finite
        state["model.embed_tokens.weight"][unused] = float("nan")

    proc = _train(*common, "checkpoint.every_steps=0", f"model.path={_model_with(assets, 'nan_row', nan_row)}",
                  f"output_dir={root / 'nan2'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not saved, the final weights hold non-finite values" in proc.stderr, proc.stderr[-3000:]
    assert "model.embed_tokens.weight (32 of" in proc.stderr
    assert not (root / "nan2" / "final").exists() and not (root / "nan2" / "train_report.json").exists()


@pytest.mark.parametrize("override, expected", [
    ("data.dir={missing}", "does not exist (run: python -m pretrain prepare"),
    ("batch.global_batch_size=6", "global_batch_size (6) is not a multiple"),
    ("batch.global_batch_size=8", "impossible batch settings: batch.global_batch_size=8 but"),
    ("batch.micro_batch_size=64", "impossible batch settings: the training set has"),
])
def test_bad_input_one_clear_message(assets, override, expected):
    override = override.format(missing=assets["root"] / "no_such_shards")
    proc = _train(f"model.path={assets['model']}", f"data.dir={assets['shards']}",
                  f"output_dir={assets['root'] / 'bad'}", "logging.wandb=disabled", override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist or is empty"),
    ("node1 slots=8\nnode2 slots=eight\n", "line 2: expected 'HOSTNAME slots=N', got 'node2 slots=eight'"),
])
def test_multi_node_script_checks_the_hostfile_before_launching(tmp_path, content, expected):
    hostfile = tmp_path / "hosts"
    if content is not None:
        hostfile.write_text(content)
    script = REPO / "pretrain" / "scripts" / "multi_node.sh"
    proc = subprocess.run(["bash", str(script), str(TINY)], env={**os.environ, "HOSTFILE": str(hostfile)},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
