"""llama.cpp itself, for the GGUF tests: node-llama-cpp's prebuilt CPU build of llama.cpp.

The version is pinned, with integrity hashes, in tests/llama_cpp/package-lock.json; ``make test``
installs it into tests/llama_cpp/node_modules where npm is found (``make llama-cpp``), so CI runs
these checks. ``$ZHLLAMA_NODE_MODULES`` names another node_modules folder holding it. Without it the
tests that need it skip and say how to get it. Everything goes through tests/llama_cpp/runtime.mjs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent / "llama_cpp"


def _entry() -> Path | None:
    modules = Path(os.environ.get("ZHLLAMA_NODE_MODULES") or RUNTIME / "node_modules")
    entry = modules / "node-llama-cpp" / "dist" / "index.js"
    return entry if shutil.which("node") and entry.is_file() else None


def require_runtime() -> Path:
    """node-llama-cpp's entry script, or a skip that says how to install it."""
    entry = _entry()
    if entry is None:
        pytest.skip("no llama.cpp runtime: `make llama-cpp` (needs node and npm) installs node-llama-cpp "
                    "into tests/llama_cpp/node_modules, or set ZHLLAMA_NODE_MODULES to a node_modules holding it")
    return entry


def _run(command: str, gguf: Path, inputs: list, arg: str, work: Path) -> list[list[int]]:
    entry = require_runtime()
    work.mkdir(parents=True, exist_ok=True)
    file = work / f"{command}_inputs.json"
    file.write_text(json.dumps(inputs, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(["node", str(RUNTIME / "runtime.mjs"), command, str(gguf), str(file), arg, str(entry)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tokenize(gguf: Path, texts: list[str], work: Path, *, special: bool = False) -> list[list[int]]:
    """llama.cpp's ids for each text: no BOS; special-token text kept as text, or (``special``) read as
    those tokens, as chat front ends (llama-server, Ollama) tokenize a rendered prompt."""
    return _run("tokenize", gguf, texts, "special" if special else "-", work)


def greedy(gguf: Path, prompts: list[list[int]], max_new: int, work: Path) -> list[list[int]]:
    """llama.cpp's greedy continuation of each prompt (ids), up to its end-of-generation token."""
    return _run("greedy", gguf, prompts, str(max_new), work)


def assert_continues_like_transformers(gguf: Path, folder: Path, prompts: list[list[int]], new: int,
                                       work: Path) -> None:
    """llama.cpp's greedy continuation of each prompt equals transformers' on ``folder``'s model, up to
    where llama.cpp stops: at ``new`` tokens, or before any special (end-of-generation) token, which
    transformers is told not to stop at."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    want = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False)
        want.append(out[0, len(ids):].tolist())
    for got, expected in zip(greedy(gguf, prompts, new, work), want):
        assert got == expected[:len(got)] and (len(got) == new or expected[len(got)] in special), (got, expected)
