"""An `sft train` checkpoint as a model folder, like the run's final/ (chat template included).

    python -m sft export-checkpoint RUN/checkpoints/step-00000200 --out outputs/sft-step200

The weights come as `python -m pretrain export-checkpoint` gathers them (no ranks, no GPU); the
template the run trained with (its recorded data.template and data.system_prompt) is saved with
them, as sft_template.json and as the tokenizer's chat template, so `sft generate`/`chat`/`serve`
and other runtimes format prompts as training did. A LoRA run's checkpoint becomes an adapter
folder: `python -m sft export --base BASE --adapter OUT` merges it as it merges final/.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zhllama.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="+",
                        help="a complete checkpoint folder of an sft train run RUN/checkpoints/step-N; several: "
                             "their weights' mean")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _add_template(folder: Path, cfg: Any, settings: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    from .chat_templates import install_chat_template
    from .templates import make_spec

    spec = make_spec(settings["data.template"], AutoTokenizer.from_pretrained(str(folder)),
                     settings.get("data.system_prompt"))
    spec.save(folder)
    install_chat_template(folder, spec)


def run(args: argparse.Namespace) -> int:
    from engine.checkpoint_export import describe, export_checkpoint, read_checkpoint

    for path in args.checkpoint:
        marker, _ = read_checkpoint(Path(path))
        if "data.template" not in marker["settings"]:
            raise UserError(f"{path} is not an `sft train` checkpoint (it records no data.template): use "
                            f"python -m pretrain export-checkpoint")
    report = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite, add_files=_add_template)
    print(f"done: {args.out} ({describe(report)}, mode {report['mode']})", flush=True)
    return 0
