"""Bits per character of a packed held-out set on a plain model (one process): the standalone twin of
the engine's in-training evaluation (same labels convention: -100 = not predicted)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


@torch.no_grad()
def dataset_bits(model, dataset: Any, collate_fn: Callable, characters: int, batch_size: int = 8,
                 device: str = "cpu") -> dict[str, float]:
    """{"loss": nats per predicted token, "bits_per_char": total bits / characters, "tokens": ...}."""
    nats, tokens = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_KEYS}
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(device)
        nats += F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                                reduction="sum").item()
        tokens += int((labels != -100).sum())
    return {"loss": nats / max(tokens, 1), "bits_per_char": nats / math.log(2) / characters, "tokens": tokens}
