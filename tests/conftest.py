"""Shared test helpers.

Real tokenizers and Chinese text live in ../shared/data (next to the repo root). Tests that need
them use the ``shared_data`` fixture, which skips with the reason when the folder is absent (a
user's fresh clone). Everything else needs nothing but the package registries.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ZHLLAMA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "PROVENANCE.md").is_file():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it ships beside the repo only on dev machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """merge -> resize -> pretrain -> sft -> export on tiny assets, built once (tests/helpers_chain.py)."""
    from helpers_chain import build_chain

    return build_chain(tmp_path_factory.mktemp("chain"))


@pytest.fixture(scope="session")
def llama_cpp_tree():
    """llama.cpp's converter + gguf-py from the pinned llama-cpp-python sdist (downloaded once)."""
    from zhllama.pinned import LLAMA_CPP, FetchError, fetch_tree

    try:
        return fetch_tree(LLAMA_CPP)
    except FetchError as exc:
        pytest.skip(f"the package registry is unreachable, so llama.cpp's converter cannot be fetched: {exc}")


@pytest.fixture(scope="session")
def fetched() -> dict[str, Path]:
    """Llama-3's, Qwen's and Mistral Tekken's tokenizer files from pinned wheels (vocab/bpe_base_sources.yaml)."""
    from vocab.bbpe_sources import fetch_bpe_bases
    from zhllama.pinned import FetchError

    try:
        return fetch_bpe_bases(log=lambda *_: None)
    except FetchError as exc:
        pytest.skip(f"Llama-3/Qwen/Tekken files could not be fetched: {exc}")


def pinned_site(name: str, pins: tuple[str, ...]) -> Path:
    """``pip install --target`` of ``pins`` into the cache once (``<cache>/pinned/<name>``), for a
    subprocess to put first on PYTHONPATH beside the test's own packages; skips without an index."""
    import shutil
    import subprocess

    from zhllama.pinned import default_cache

    target = default_cache() / "pinned" / name
    if (target / "DONE").is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
                           "--target", str(partial), *pins], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"could not install {', '.join(pins)} from the package index: {proc.stderr.strip()[-300:]}")
    (partial / "DONE").write_text("\n".join(pins))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


@pytest.fixture(scope="session")
def cmrc_lines(shared_data) -> list[str]:
    """The non-empty lines of ../shared/data's CMRC paragraphs (real Chinese text; skips where absent)."""
    text = (shared_data / "pretrain" / "cmrc2018_dev_contexts.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]
