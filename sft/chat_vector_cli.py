"""A Chinese chat model without instruction tuning: add the chat vector (chat - base) to your pretrained model.

    python -m sft chat-vector --target outputs/zh-pt-merged --base models/llama-2-7b \\
        --chat models/llama-2-7b-chat --out outputs/zh-chat [--ratio 1.0] [--embeddings add|skip] \\
        [--max-shard-size 5GB] [--overwrite]

``--target`` is a model continued-pretrained from ``--base`` (a merged LoRA run, a full run's final/,
with or without an extended vocabulary); ``--chat`` is the chat model its makers tuned from the same
base. Writes target + ratio x (chat - base), tensor by tensor, with the target's tokenizer and the chat
model's chat template: then ``sft generate`` / ``chat`` / ``serve`` or ``sft train`` from it (a chat
vector is also a strong start for SFT). Refused before anything is written: tensors that do not pair
up, a target not of the base's shapes, a base id that means another token in the target or the chat model.
"""
from __future__ import annotations

import argparse
import math

from zhllama.errors import UserError, raise_if_problems

from .chat_vector import EMBEDDING_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="the model to give chat ability (pretrained from --base)")
    parser.add_argument("--base", required=True, help="the base model the chat model was tuned from")
    parser.add_argument("--chat", required=True, help="the chat model (same base, same architecture)")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--ratio", type=float, default=1.0, help="the vector's weight (1.0; the paper tries 0.5-1)")
    parser.add_argument("--embeddings", default="add", choices=EMBEDDING_MODES,
                        help="add: the base's rows of embed_tokens/lm_head get the vector too (new rows never); "
                             "skip: both matrices as the target has them")
    parser.add_argument("--max-shard-size", default="5GB", help="output safetensors shard size (5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from zhllama.safetensors_io import parse_size

    from .chat_vector import plan_chat_vector, write_chat_vector

    problems = []
    if not math.isfinite(args.ratio) or args.ratio <= 0:
        problems.append(f"--ratio must be a positive number, got {args.ratio}")
    try:
        max_bytes = parse_size(args.max_shard_size)
    except UserError as e:
        problems.append(str(e))
    raise_if_problems("chat-vector settings", problems)
    plan = plan_chat_vector(args.target, args.base, args.chat)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm as progress
    report = write_chat_vector(plan, args.out, ratio=args.ratio, embeddings=args.embeddings, overwrite=args.overwrite,
                               max_shard_bytes=max_bytes, progress=progress)
    for note in report["notes"]:
        print(note)
    new = sum(report["new_rows_left_as_trained"].values())
    print(f"done: {args.out} = target + {args.ratio} x (chat - base) over {report['tensors']} tensors"
          + (f"; {new:,} new embedding/head rows left as the target trained them" if new else ""), flush=True)
    return 0
