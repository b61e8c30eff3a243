"""Launching 2 real CPU ranks with torchrun from a test (the driver is the test module itself)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(driver: str | Path, spec: dict, ranks: int = 2) -> list[str]:
    """torchrun running ``driver`` (a test module whose ``__main__`` reads the JSON spec) on ``ranks`` ranks."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--nproc_per_node", str(ranks), "--master_port", str(free_port()), str(driver), json.dumps(spec)]


def dist_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore::FutureWarning"}


def sft_train(launch: list[str], *overrides: str) -> subprocess.CompletedProcess:
    """``python -m sft train`` under ``launch`` (torchrun ... or the interpreter); asserts it succeeded."""
    proc = subprocess.run([*launch, "-m", "sft", "train", *overrides], cwd=REPO, env=dist_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def torchrun_launch(ranks: int) -> list[str]:
    """The launcher of ``ranks`` ranks (the interpreter itself for one)."""
    if ranks == 1:
        return [sys.executable]
    return [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(ranks), "--master_port",
            str(free_port())]
