"""A training checkpoint as a model folder, like the run's final/ (to evaluate or convert step N now).

    python -m pretrain export-checkpoint RUN/checkpoints/step-00004000 --out outputs/pt-step4000
    python -m pretrain export-checkpoint RUN/checkpoints/step-0000{3,4,5}000 --out outputs/pt-avg  # their mean

No ranks, no GPU: the fp32 weights are gathered from the ZeRO shards on CPU (RAM: the trained
tensors in fp32 plus the model). The run's recorded settings rebuild the model from the folder it
started from, which must still exist. A LoRA run's checkpoint becomes an adapter folder, merged by
``python -m sft export --base BASE --adapter OUT`` as its final/ is. An ``sft train`` checkpoint is
refused here: ``python -m sft export-checkpoint`` adds the chat template it trained with.

Several checkpoints of one model (full or embeddings mode) give the mean of their fp32 weights:
checkpoint averaging, e.g. over the stable phase of a wsd run (as Llama 3 averaged checkpoints
while annealing). LoRA checkpoints are refused: the mean of the factors is not the mean of the updates.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhllama.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="+",
                        help="a complete checkpoint folder RUN/checkpoints/step-N; several: their weights' mean")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from engine.checkpoint_export import describe, export_checkpoint, read_checkpoint

    for path in args.checkpoint:
        marker, _ = read_checkpoint(Path(path))
        if "data.template" in marker["settings"]:  # an SFT run's: its folder needs the template it trained with
            raise UserError(f"{path} is an `sft train` checkpoint: use python -m sft export-checkpoint "
                            f"(it adds the chat template the run trained with)")
    report = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"done: {args.out} ({describe(report)}, mode {report['mode']})", flush=True)
    return 0
