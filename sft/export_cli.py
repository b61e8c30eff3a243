"""Merge a LoRA SFT run into its base model and write a plain Hugging Face folder (safetensors).

    python -m sft export --base MODEL --adapter RUN_OUTPUT --out DIR [--gguf f16]

RUN_OUTPUT is the ``output_dir`` of ``python -m sft train`` (its ``final/`` holds the adapter with
the fully trained embed_tokens/lm_head, the tokenizer and ``sft_template.json``). The vocabulary
sizes of base, adapter and tokenizer are checked first. A ``mode=full`` run is re-saved as is. A
``pretrain train`` LoRA run merges the same way into a base model: no template, no chat template
(``python -m sft export --base RESIZED --adapter outputs/pt-7b --out outputs/pt-7b-merged``).
DIR gets the merged model, the tokenizer (files copied byte for byte, plus the template's Jinja
chat template), the template and ``export_report.json``. ``--gguf TYPE`` then converts DIR with
llama.cpp's own converter (pinned, fetched once) into ``DIR/model-TYPE.gguf``, with
``DIR/Modelfile`` for Ollama (its Go chat template, sft/ollama.py): ``ollama create NAME -f DIR/Modelfile``.
"""
from __future__ import annotations

import argparse

from zhllama.gguf import OUTTYPES

from .templates import TEMPLATE_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="the model folder the run was trained from")
    parser.add_argument("--adapter", required=True, help="the run's output_dir (or its final/ folder)")
    parser.add_argument("--out", required=True, help="folder to write (refused if it exists, unless --overwrite)")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, default=None,
                        help="only for SFT runs without sft_template.json (a pretraining run gets none)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--force", action="store_true",
                        help="merge even when --base is not the model the run recorded (the report says so)")
    parser.add_argument("--gguf", choices=OUTTYPES, default=None,
                        help="also write DIR/model-TYPE.gguf with llama.cpp's convert_hf_to_gguf.py, and DIR/Modelfile "
                             "for Ollama")


def run(args: argparse.Namespace) -> int:
    from .export import export_merged, summary

    report = export_merged(args.base, args.adapter, args.out, template=args.template, overwrite=args.overwrite,
                           force=args.force)
    print(summary(report))
    print(f"wrote {args.out}")
    if args.gguf:
        from pathlib import Path

        from zhllama.gguf import convert

        from .ollama import modelfile_text, write_modelfile

        gguf = Path(args.out) / f"model-{args.gguf}.gguf"
        modelfile = modelfile_text(args.out, gguf.name)  # refused before minutes of conversion, not after
        print(f"wrote {convert(args.out, gguf, outtype=args.gguf)}")
        print(f"wrote {write_modelfile(args.out, modelfile)} (ollama create NAME -f {Path(args.out) / 'Modelfile'})")
    return 0
