"""Prepared shards + a tiny model, and `python -m pretrain train` as a subprocess (one rank)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_prepare import write_lines, write_manifest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"


def _manifest(folder: Path, lines: list[str]) -> Path:
    corpus = write_lines(folder / "corpus.txt", lines)
    return write_manifest(folder / "manifest.yaml", [{"name": "tiny", "file": corpus}], holdout=0.2, name="tiny")


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
