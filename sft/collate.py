"""SFT dataset over tokenized samples, optional packing, and the collator the engine calls.

A sample is ``input_ids`` + ``labels`` (-100 where no loss). Without packing each dataset item is
one sample and the collator pads on the right with an ``attention_mask``. With packing, samples
are concatenated into rows of at most ``max_seq_length`` tokens (next-fit over the shuffled order,
so rows mix sources) and ``position_ids`` restart at 0 at every sample boundary, as in
pretraining: transformers then builds a block-diagonal causal mask from the position resets (it
does so when ``attention_mask`` is absent), so packed samples never attend to each other. Every
sample starts with prompt tokens labelled -100, so no loss crosses a boundary either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .templates import IGNORE_INDEX


class TokenizedSamples:
    """Samples stored flat: ``tokens``/``labels`` int32 arrays cut by ``offsets`` (n+1 entries);
    ``records[i]`` is the 0-based record of the source file that sample ``i`` came from."""

    def __init__(self, tokens: np.ndarray, labels: np.ndarray, offsets: np.ndarray, records: np.ndarray):
        self.tokens, self.labels, self.offsets, self.records = tokens, labels, offsets, records

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.tokens[lo:hi], self.labels[lo:hi]

    @staticmethod
    def from_lists(samples: Sequence[tuple[list[int], list[int]]], records: Sequence[int]) -> "TokenizedSamples":
        lengths = [len(ids) for ids, _ in samples]
        offsets = np.zeros(len(samples) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        flat = lambda k: np.fromiter((t for s in samples for t in s[k]), dtype=np.int32, count=int(offsets[-1]))
        return TokenizedSamples(flat(0), flat(1), offsets, np.asarray(records, dtype=np.int64))

    @staticmethod
    def concat(parts: Sequence["TokenizedSamples"]) -> tuple["TokenizedSamples", list[int]]:
        """One store of several; returns it and each part's first sample index."""
        starts, offsets, shift, first = [], [np.zeros(1, dtype=np.int64)], 0, 0
        for part in parts:
            starts.append(first)
            offsets.append(part.offsets[1:] + shift)
            shift += int(part.offsets[-1])
            first += len(part)
        merged = TokenizedSamples(
            np.concatenate([p.tokens for p in parts]) if parts else np.zeros(0, np.int32),
            np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, np.int32),
            np.concatenate(offsets),
            np.concatenate([p.records for p in parts]) if parts else np.zeros(0, np.int64))
        return merged, starts


def pack_rows(lengths: Sequence[int], order: Sequence[int], max_length: int) -> list[list[int]]:
    """Group sample indices (in ``order``) into rows whose total length is ≤ ``max_length``."""
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        if current and used + n > max_length:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        rows.append(current)
    return rows


class SFTDataset(Dataset):
    """Items are dicts of int64 tensors: input_ids, labels (and position_ids when packed)."""

    def __init__(self, samples: TokenizedSamples, rows: list[list[int]], packed: bool):
        self.samples, self.rows, self.packed = samples, rows, packed

    @staticmethod
    def unpacked(samples: TokenizedSamples, order: Sequence[int]) -> "SFTDataset":
        return SFTDataset(samples, [[i] for i in order], packed=False)

    @staticmethod
    def packed_from(samples: TokenizedSamples, order: Sequence[int], max_length: int) -> "SFTDataset":
        lengths = np.diff(samples.offsets).tolist()
        return SFTDataset(samples, pack_rows(lengths, order, max_length), packed=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        parts = [self.samples.get(i) for i in self.rows[index]]
        ids = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        item = {"input_ids": torch.from_numpy(ids.astype(np.int64)),
                "labels": torch.from_numpy(labels.astype(np.int64))}
        if self.packed:
            item["position_ids"] = torch.cat([torch.arange(len(p[0])) for p in parts])
        return item

    def trainable_tokens(self) -> int:
        seen = np.concatenate(([0], np.cumsum(self.samples.labels != IGNORE_INDEX)))  # running count
        per_sample = seen[self.samples.offsets[1:]] - seen[self.samples.offsets[:-1]]
        used = np.fromiter((i for row in self.rows for i in row), dtype=np.int64)
        return int(per_sample[used].sum())


@dataclass
class SFTCollator:
    """Right-pads a batch. Packed items keep their ``position_ids`` and get no attention mask
    (padding forms its own position run, labelled -100); unpacked items get ``attention_mask``."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in items[0]
        batch = {
            "input_ids": torch.full((len(items), width), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long),
        }
        if packed:
            batch["position_ids"] = torch.zeros((len(items), width), dtype=torch.long)
        else:
            batch["attention_mask"] = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = item["input_ids"]
            batch["labels"][row, :n] = item["labels"]
            if packed:
                batch["position_ids"][row, :n] = item["position_ids"]
                batch["position_ids"][row, n:] = torch.arange(width - n)
            else:
                batch["attention_mask"][row, :n] = 1
        return batch
