"""Deterministic data order keyed by (seed, epoch, step) — the reason resume is exact.

The global batch of optimizer step ``s`` is a fixed slice of the epoch's permutation, so a run
resumed at step ``s`` sees exactly the samples the uninterrupted run would have seen; no sampler
or dataloader state needs saving. Incomplete global batches at the end of an epoch are dropped.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from zhllama.errors import UserError


@dataclass(frozen=True)
class StepPlan:
    num_samples: int
    micro_batch_size: int
    accumulation: int
    world_size: int
    seed: int
    repeat: int = 1  # consecutive optimizer steps on one global batch (GRPO's iterations: engine/grpo.py)

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def check(self) -> None:
        if self.steps_per_epoch < 1:
            raise UserError(
                f"impossible batch settings: the training set has {self.num_samples} samples but one optimizer step "
                f"needs {self.global_batch} (micro_batch_size {self.micro_batch_size} x gradient_accumulation_steps "
                f"{self.accumulation} x {self.world_size} ranks); lower the batch or add data"
            )

    def total_steps(self, max_steps: int, epochs: float) -> int:
        return max_steps if max_steps > 0 else max(1, math.ceil(epochs * self.steps_per_epoch)) * self.repeat

    @functools.lru_cache(maxsize=1)  # every step of an epoch slices the same permutation: build it once
    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=gen)

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Sample indices of each micro batch this rank runs for optimizer step ``step`` (0-based); with
        ``repeat`` > 1, steps g, g+1 .. g+repeat-1 (g a multiple of it) get the same ones."""
        epoch, within = divmod(step // self.repeat, self.steps_per_epoch)
        perm = self._permutation(epoch)
        start = within * self.global_batch
        out = []
        for micro in range(self.accumulation):
            offset = start + (micro * self.world_size + rank) * self.micro_batch_size
            out.append(perm[offset : offset + self.micro_batch_size].tolist())
        return out


def fetch(dataset: Any, indices: list[int], collate_fn: Callable[[list[dict]], dict]) -> dict:
    return collate_fn([dataset[i] for i in indices])


def eval_batches(num_samples: int, batch_size: int, rank: int, world_size: int, max_batches: int | None) -> Iterator[list[int]]:
    """This rank's eval batches; every rank yields the same count (ZeRO-3 forwards are collective).

    A rank with nothing left gets an empty list; the loop then runs a dummy batch with zero weight.
    """
    batches = [list(range(i, min(i + batch_size, num_samples))) for i in range(0, num_samples, batch_size)]
    if max_batches is not None:
        batches = batches[: max_batches * world_size]
    rounds = math.ceil(len(batches) / world_size)
    for r in range(rounds):
        k = r * world_size + rank
        yield batches[k] if k < len(batches) else []


def default_collate(items: list[dict]) -> dict:
    """Stack equal-length LongTensor fields (packed pretraining blocks)."""
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
