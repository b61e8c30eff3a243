"""Write an Ollama Modelfile for a GGUF of an exported model (one quantized later, or converted by hand).

    python -m sft modelfile outputs/zh_sft_merged --gguf outputs/zh_sft_merged/model-Q4_K_M.gguf
    ollama create zh-alpaca -f outputs/zh_sft_merged/Modelfile

``sft export --gguf`` writes one already. The folder gives the chat template (sft_template.json),
tokenizer and context; the Modelfile goes into it, naming the GGUF by a path relative to it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from zhllama.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the model folder the GGUF was converted from (`sft export --out`)")
    parser.add_argument("--gguf", required=True, help="the GGUF file Ollama should load")


def run(args: argparse.Namespace) -> int:
    from zhllama.model_folder import require_model_folder

    from .ollama import modelfile_text, write_modelfile

    folder, gguf = Path(args.folder), Path(args.gguf)
    require_model_folder(folder, "Modelfile:")
    if not gguf.is_file():
        raise UserError(f"--gguf {gguf}: no such file")
    with gguf.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UserError(f"--gguf {gguf}: not a GGUF file (it does not start with the GGUF magic)")
    relative = Path(os.path.relpath(gguf.resolve(), folder.resolve())).as_posix()
    path = write_modelfile(folder, modelfile_text(folder, relative))
    print(f"wrote {path} (ollama create NAME -f {path})")
    return 0
