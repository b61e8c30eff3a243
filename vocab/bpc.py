"""Bits per character: total negative log-likelihood in bits divided by the characters of the text.

Per-token loss cannot compare a model reading 32k-vocabulary tokens with one reading a merged
vocabulary (fewer, longer tokens); bits per character can, because both score the same text. Every
token of every text is scored exactly once, conditioned on BOS and as much preceding context as
fits in ``block_size`` (texts longer than that are cut into consecutive windows).

    from vocab.bpc import bits_per_character
    result = bits_per_character(model, texts, encode=sp.encode, bos_id=sp.bos_id())
    print(result.bpc)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence


@dataclass
class BpcResult:
    nll_bits: float  # total over all scored tokens
    characters: int
    tokens: int  # tokens scored (BOS excluded)

    @property
    def bpc(self) -> float:
        return self.nll_bits / max(self.characters, 1)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.characters, 1)


def windows(ids: Sequence[int], block_size: int) -> list[list[int]]:
    """Cut ``ids`` into windows of at most block_size + 1 ids overlapping by one, so that every id
    after the first is a prediction target exactly once."""
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    return [list(ids[start:start + block_size + 1]) for start in range(0, max(len(ids) - 1, 0), block_size)]


def bits_per_character(
    model,
    texts: Iterable[str],
    encode: Callable[[str], list[int]],
    bos_id: int,
    block_size: int = 256,
    batch_size: int = 8,
    progress: Callable | None = None,
) -> BpcResult:
    """Score ``texts`` with a causal LM (any module returning ``.logits``), in float32 log-softmax."""
    import torch
    import torch.nn.functional as F

    texts = list(texts)
    chunks: list[list[int]] = []
    for text in texts:
        chunks.extend(windows([bos_id] + list(encode(text)), block_size))
    chunks.sort(key=len, reverse=True)  # similar lengths share a batch: less padding
    batches = [chunks[i:i + batch_size] for i in range(0, len(chunks), batch_size)]
    if progress is not None:
        batches = progress(batches, desc="scoring", unit="batch")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, scored = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            width = max(len(c) for c in batch) - 1
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, chunk in enumerate(batch):
                n = len(chunk) - 1
                inputs[row, :n] = torch.tensor(chunk[:-1])
                targets[row, :n] = torch.tensor(chunk[1:])
                mask[row, :n] = 1
            logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1),
                                   ignore_index=-100, reduction="sum")
            nats += float(loss)
            scored += int(mask.sum())
    model.train(was_training)
    return BpcResult(nll_bits=nats / math.log(2), characters=sum(len(t) for t in texts), tokens=scored)
