"""Bits per character of raw text on a model with its OWN tokenizer — how a base model is measured on
the same held-out documents as the run (bits/char is the measure that survives a vocabulary change).

    texts = held_out_texts("corpora_manifests/shared_mixed.yaml")   # the slice `pretrain prepare` validates on
    text_bits(model, tokenizer, texts, block_size=1024, device="cuda") -> {"loss", "bits_per_char", ...}

Each document is ``[START] ids(text) [EOS]`` (START = BOS, or EOS without one), cut into windows of
``block_size`` tokens overlapping by one, so every token but START is predicted exactly once —
the rule of ``pretrain prepare``'s blocks, applied per document (attention never crosses documents
there either). Characters are the documents' code points after the manifest's cleaning.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from zhllama.token_losses import token_losses


def held_out_texts(manifest_path: str | Path) -> list[str]:
    """The manifest's held-out slice (every source with weight > 0, each document once)."""
    from corpora.manifest import iter_documents, load_manifest
    from zhllama.errors import UserError

    manifest = load_manifest(manifest_path)
    if manifest.holdout.fraction <= 0:
        raise UserError(f"{manifest_path}: the manifest has no holdout slice (holdout.fraction is 0)")
    return [doc.text for source in manifest.sources if source.weight > 0
            for doc in iter_documents(source, split="holdout")]


def _windows(tokenizer, texts: list[str], block_size: int) -> list[list[int]]:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
        doc = [start] + ids + [tokenizer.eos_token_id]
        for s in range(0, len(doc) - 1, block_size - 1):
            out.append(doc[s : s + block_size])
    return out


@torch.no_grad()
def text_bits(model, tokenizer, texts: list[str], block_size: int = 1024, batch_size: int = 8,
              device: str = "cpu") -> dict[str, float]:
    windows = sorted(_windows(tokenizer, texts, block_size), key=len, reverse=True)
    nats, tokens = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = len(chunk[0])
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, w in enumerate(chunk):
            ids[row, : len(w)] = torch.tensor(w)
            mask[row, : len(w)] = 1
        # the head a chunk of positions at a time: never batch x block x vocab fp32 logits
        nats += token_losses(model, ids.to(device), mask.to(device)).double().sum().item()
        tokens += int(mask[:, 1:].sum())
    characters = sum(len(t) for t in texts)  # as `pretrain prepare` counts them (the EOS adds no character)
    return {"loss": nats / max(tokens, 1), "bits_per_char": nats / math.log(2) / characters, "tokens": tokens,
            "characters": characters, "documents": len(texts)}
