"""Loss on labelled tokens, and validation: loss, perplexity, bits per character."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data import eval_batches, fetch
from .loss import fused_head_of, labels_for, shift_labels
from .sequence_parallel import WHOLE_ROWS, SequenceSplit

MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def forward_loss(engine, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy in nats, number of predicted tokens) of one batch.

    Labels follow the HF convention (aligned with input_ids, -100 = not trained); the shift is here
    so the engine can weight by token counts across ranks and micro batches. A batch may carry
    ``targets`` instead, already aligned with the positions that predict them (a sequence-parallel
    rank's slice, shifted on the whole row: engine/sequence_parallel.py).
    """
    inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_KEYS}
    targets = batch["targets"].to(device) if "targets" in batch else shift_labels(batch["labels"].to(device))
    head = fused_head_of(getattr(engine, "module", engine))  # a DeepSpeed engine, or a bare model
    if head is not None:  # engine/loss.py: the loss straight from hidden states, chunk by chunk
        with labels_for(head, targets):
            loss_sum = engine(**inputs, use_cache=False).logits
        return loss_sum, (targets != -100).sum()
    # use_cache=False also matters for correctness: with a cache, HF ignores packed position_ids
    # when building the mask, and attention would cross document boundaries.
    logits = engine(**inputs, use_cache=False).logits.float()
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                               reduction="sum")
    return loss_sum, (targets != -100).sum()


@contextmanager
def eval_mode(engine):
    """Eval mode for a pass every rank runs, the training mode restored after it."""
    was_training = engine.module.training
    engine.eval()
    try:
        yield
    finally:
        if was_training:
            engine.train()


def summed_over_ranks(values: torch.Tensor, device) -> torch.Tensor:
    """Every rank's ``values`` added up (NCCL reduces on the GPU), returned on the CPU."""
    if dist.get_backend() == "nccl":
        values = values.to(device)
    dist.all_reduce(values)
    return values.cpu()


@torch.no_grad()
def evaluate(engine, dataset: Any, collate_fn: Callable, batch_size: int, max_batches: int | None,
             characters: int | None, device, split: SequenceSplit = WHOLE_ROWS) -> dict[str, float]:
    """Every rank runs the same number of forwards (ZeRO-3 gathers are collective). With sequence parallelism
    (``split`` active), the ranks of a sequence group read the same rows and each scores its positions."""
    rank, world = dist.get_rank(), dist.get_world_size()
    counts_rows = True
    if split.active:
        rank, world, counts_rows = split.groups.data_rank, split.groups.data_ranks, split.groups.rank == 0
    totals = torch.zeros(2, dtype=torch.float64)
    dummy = None
    seen = 0
    with eval_mode(engine):
        for indices in eval_batches(len(dataset), batch_size, rank, world, max_batches):
            if indices:
                batch = fetch(dataset, indices, collate_fn)
                dummy = dummy or batch
                seen += len(indices) if counts_rows else 0
                weight = 1.0
            else:
                batch = dummy if dummy is not None else fetch(dataset, [0], collate_fn)
                weight = 0.0
            with split.micro(batch, device) as (part, _):
                loss_sum, count = forward_loss(engine, part, device)
            totals += torch.tensor([loss_sum.item() * weight, count.item() * weight], dtype=torch.float64)
    stats = torch.tensor([totals[0].item(), totals[1].item(), float(seen)], dtype=torch.float64)
    nats, tokens, samples = summed_over_ranks(stats, device).tolist()
    loss = nats / max(tokens, 1.0)
    out = {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)), "eval/tokens": tokens}
    if characters and int(samples) == len(dataset):  # only on the whole set is bits/char meaningful
        out["eval/bits_per_char"] = nats / math.log(2) / characters
    return out
