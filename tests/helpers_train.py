"""Prepared shards + a tiny model, and `python -m pretrain train` as a subprocess (one rank)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"


def _manifest(folder: Path, lines: list[str]) -> Path:
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = {"name": "tiny", "holdout": {"fraction": 0.2, "salt": "t"}, "sources": [{
        "name": "tiny", "path": str(corpus), "format": "txt", "language": "zh", "license": "test",
        "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(), "weight": 1.0}]}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from engine.tiny import DEFAULT_TEXT, make_tiny_model, make_tiny_tokenizer
    from pretrain.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_model(root / "model")
    lines = [f"{i}: {t}" for i, t in enumerate(DEFAULT_TEXT)]
    manifest = _manifest(root, lines)
    (root / "more").mkdir()
    prepare(PrepareConfig(manifest=str(manifest), tokenizer=str(model), block_size=32, out=str(root / "shards"),
                          progress=False))
    prepare(PrepareConfig(manifest=str(_manifest(root / "more", lines[::-1])), tokenizer=str(model), block_size=32,
                          out=str(root / "more_shards"), progress=False))
    other_tok = make_tiny_tokenizer(root / "other_tok", texts=lines[::-1] + ["另一个分词器"] * 5, vocab_size=600)
    prepare(PrepareConfig(manifest=str(manifest), tokenizer=str(other_tok), block_size=32,
                          out=str(root / "other_shards"), progress=False))
    return {"root": root, "model": model, "shards": root / "shards", "other_shards": root / "other_shards",
            "more_shards": root / "more_shards"}


def _train(*overrides: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore::FutureWarning"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(TINY), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
