"""`sft train` with named held-out sets (eval.sets): what instruction tuning costs the model on plain
text, measured as in pretraining (one process, ZeRO-3, a tiny LoRA run).

The base numbers (eval_base.json, step 0) must equal bits/char computed here with a plain forward
of the base model over the same prepared blocks; the set is scored at every evaluation and lands in
the forgetting report; a set prepared with another tokenizer stops the run before training.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_prepare import write_lines, write_manifest
from helpers_sft import ZH_RECORDS, tiny_model, tiny_tokenizer, write_json

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "sft" / "configs" / "tiny_cpu.yaml"
ENGLISH = ["The cat sat on the mat and watched the rain fall on the quiet town.",
           "Rivers run to the sea, yet the sea is never full; the wind goes round and round.",
           "A small boat crossed the lake at dawn while the birds were still asleep.",
           "Tokenize once, train many times, and keep every held-out line for the end."] * 6


def _prepared(root: Path, name: str, tokenizer: Path) -> Path:
    from engine.packed import PackedDataset
    from pretrain.prepare import PrepareConfig, prepare

    lines = [f"{i}: {line}" for i, line in enumerate(ENGLISH)]
    manifest = write_manifest(root / f"{name}.yaml", [{"name": name, "file": write_lines(root / f"{name}.txt", lines)}],
                              holdout=0.5, name=name)
    out = root / f"{name}_shards"
    prepare(PrepareConfig(manifest=str(manifest), tokenizer=str(tokenizer), block_size=48, out=str(out),
                          progress=False))
    assert len(PackedDataset(out, "validation")) > 0
    return out


def _sft(root: Path, model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    data = write_json(root / "zh.json", ZH_RECORDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::FutureWarning"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "sft", "train", "--config", str(TINY_CONFIG), f"model.path={model}",
           f"output_dir={out}", f"data.cache_dir={root / 'cache'}", f"data.files=[{{path: '{data}', weight: 4.0}}]",
           "data.eval_fraction=0.0", "schedule.max_steps=8", "eval.every_steps=4", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _bits_per_char(model_dir: Path, shards: Path) -> float:
    """Plain teacher forcing over every validation block: the reference the engine must match."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from engine.packed import PackedDataset

    ds = PackedDataset(shards, "validation")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    nats = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            block = ds[i]
            logits = model(input_ids=block["input_ids"][None], position_ids=block["position_ids"][None],
                           use_cache=False).logits[0, :-1]
            nats += F.cross_entropy(logits, block["labels"][1:], ignore_index=-100, reduction="sum").item()
    return nats / math.log(2) / ds.characters


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_sets")
    tokenizer = tiny_tokenizer(root / "tok")
    model = tiny_model(root / "model", tokenizer, hidden=32)
    return root, model, _prepared(root, "en", model)


def test_named_sets_are_scored_during_sft_from_the_base_on(assets):
    root, model, en = assets
    out = root / "run"
    proc = _sft(root, model, out, f"eval.sets=[{{name: en, dir: '{en}'}}]")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r["eval/en/bits_per_char"] for r in records if "eval/en/bits_per_char" in r}
    assert sorted(scored) == [4, 8], scored
    base = json.loads((out / "eval_base.json").read_text())["metrics"]["eval/en/bits_per_char"]
    assert base == pytest.approx(_bits_per_char(model, en), rel=1e-5)
    assert scored[8] != base  # the adapters and embeddings trained on Chinese instructions moved it
    assert "| eval/en/bits_per_char |" in (out / "report.md").read_text()
    report = json.loads((out / "train_report.json").read_text())
    assert [p["step"] for p in report["forgetting"]["eval/en/bits_per_char"]["steps"]] == [4, 8]


def test_a_set_made_with_another_tokenizer_stops_sft_before_training(assets):
    from engine.tiny import make_tiny_tokenizer

    root, model, _ = assets
    other_tok = make_tiny_tokenizer(root / "other_tok", texts=ENGLISH + ["另一个分词器"] * 5, vocab_size=300)
    other = _prepared(root, "other", other_tok)
    out = root / "refused"
    proc = _sft(root, model, out, f"eval.sets=[{{name: other, dir: '{other}'}}, {{name: gone, dir: '{root / 'no'}'}}]")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    assert "2 problems" in proc.stderr and "eval.sets other:" in proc.stderr and "another tokenizer" in proc.stderr
    assert f"eval.sets gone: prepared data folder {root / 'no'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "final").exists()
