"""Bits per character of documents under a reference language model: CCNet-style perplexity filtering.

    bits = document_bits(model, tokenizer, texts, max_chars=2000, batch_size=16, device="cuda")

Each document's first ``max_chars`` characters are scored as ``[BOS] ids`` (every token after BOS
predicted once); bits per character make documents of any length, and models with any tokenizer,
comparable. A model that reads clean Chinese well gives machine-translated, garbled or spammy text
high bits per character, and template boilerplate very low ones (CCNet kept the middle and head of
its Wikipedia-trained model's distribution). Documents are batched by length, right-padded; logits
are made a chunk of positions at a time (zhllama/token_losses.py).
"""
from __future__ import annotations

import math

import torch

from zhllama.token_losses import token_losses


@torch.no_grad()
def document_bits(model, tokenizer, texts: list[str], max_chars: int = 2000, batch_size: int = 16,
                  device: str = "cpu", progress: bool = False) -> list[float]:
    """Bits per character of each text's first ``max_chars`` characters (in the order given)."""
    from tqdm.auto import tqdm

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    heads = [t[:max_chars] for t in texts]
    ids = [[start] + row for row in tokenizer(heads, add_special_tokens=False).input_ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    out = [math.nan] * len(texts)
    for b in tqdm(range(0, len(order), batch_size), desc="bits per character", unit="batch", disable=not progress):
        rows = order[b : b + batch_size]
        width = len(ids[rows[0]])
        batch = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for r, i in enumerate(rows):
            batch[r, : len(ids[i])] = torch.tensor(ids[i])
            mask[r, : len(ids[i])] = 1
        nats = token_losses(model, batch.to(device), mask.to(device)).sum(dim=1)
        for r, i in enumerate(rows):
            out[i] = float(nats[r]) / math.log(2) / max(len(heads[i]), 1)
    return out


def ranks(device: str) -> tuple[int, int, str]:
    """(rank, world size, this rank's device). Under torchrun each rank scores every world-th document; one
    process (no WORLD_SIZE) scores them all."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def gather(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order (the object itself with one process)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out
