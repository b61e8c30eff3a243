"""Convert a model folder to GGUF with llama.cpp's own converter, and read a GGUF's vocabulary back.

    from zhllama.gguf import convert, read_vocab
    convert("outputs/zh_sft_merged", "outputs/zh_sft_merged/model-f16.gguf")   # whole model
    convert(DIR, "vocab.gguf", vocab_only=True)                              # metadata only, seconds
    read_vocab("vocab.gguf")["chat_template"]

The converter is llama.cpp's ``convert_hf_to_gguf.py`` with its bundled gguf-py, from the pinned
llama-cpp-python sdist (zhllama.pinned.LLAMA_CPP), run as a subprocess: what users of llama.cpp,
Ollama and LM Studio run on our folders. No C++ build is needed. It runs as shipped but for one
case (zhllama/gguf_launch.py): a byte-level BPE base extended with Chinese tokens changes the ids
of the check text by which the converter names the pre-tokenizer, so there the base tokenizer's
ids name it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import UserError
from .model_folder import require_model_folder
from .pinned import LLAMA_CPP, fetch_tree
from .tokenizer_files import looks_like_tiktoken

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")


def convert(model_dir: str | Path, outfile: str | Path, *, vocab_only: bool = False, outtype: str = "f16",
            cache: Path | None = None, log=print) -> Path:
    """Run the pinned converter on ``model_dir``; the GGUF appears at ``outfile`` only when complete."""
    model_dir, outfile = Path(model_dir), Path(outfile)
    require_model_folder(model_dir, "GGUF conversion:")
    if outtype not in OUTTYPES:
        raise UserError(f"GGUF type {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    _refuse_rank_file_as_sentencepiece(model_dir)
    tree = fetch_tree(LLAMA_CPP, cache, log)
    partial = outfile.with_name(f".{outfile.name}.partial")
    cmd = [sys.executable, "-m", "zhllama.gguf_launch", str(tree), str(model_dir), "--outfile", str(partial),
           "--outtype", outtype] + (["--vocab-only"] if vocab_only else [])
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]  # zhllama itself
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise UserError(f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir}:\n{tail}")
    os.replace(partial, outfile)
    return outfile


def _refuse_rank_file_as_sentencepiece(model_dir: Path) -> None:
    """Llama-3's tiktoken ``tokenizer.model`` at the top of a folder: the converter reads that name as
    SentencePiece and fails deep inside protobuf; say what it is and what to do instead."""
    path = model_dir / "tokenizer.model"
    if path.is_file() and (model_dir / "tokenizer.json").is_file() and looks_like_tiktoken(path):
        raise UserError(f"{path} is a tiktoken rank file, which llama.cpp's converter reads as a SentencePiece "
                        f"model; move it to {model_dir / 'original'}/ (where `python -m vocab merge` now writes "
                        "it and Meta's repositories keep it): tokenizer.json is the tokenizer")


def read_vocab(path: str | Path) -> dict[str, Any]:
    """The tokenizer metadata of a GGUF file, read with the converter's own gguf-py."""
    tree = fetch_tree(LLAMA_CPP, log=lambda *_: None)
    if str(tree / "gguf-py") not in sys.path:
        sys.path.insert(0, str(tree / "gguf-py"))
    from gguf import GGUFReader  # the bundled copy, as the converter used

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    prefix = "tokenizer.ggml."
    return {
        "model": value(prefix + "model"),
        "pre": value(prefix + "pre"),
        "tokens": value(prefix + "tokens"),
        "merges": value(prefix + "merges"),
        "scores": value(prefix + "scores"),
        "token_type": value(prefix + "token_type"),
        **{f"{k}_id": value(f"{prefix}{k}_token_id") for k in ("bos", "eos", "unknown", "padding")},
        "add_bos": value(prefix + "add_bos_token"),
        "add_eos": value(prefix + "add_eos_token"),
        "add_space_prefix": value(prefix + "add_space_prefix"),
        "chat_template": value("tokenizer.chat_template"),
    }
