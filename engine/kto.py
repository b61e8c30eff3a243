"""Kahneman-Tversky Optimization (KTO, Ethayarajh et al. 2024) as an objective of the one engine: preference
tuning from answers judged desirable or undesirable one by one (thumbs up / down), no pairs needed.

A batch holds examples: row 2i is example i's prompt and answer, row 2i+1 the same prompt with another
example's answer (its mismatched answer, fixed when the data are built: sft/kto.py). Only the answers are
labelled. With the policy's summed log-probability ``pi`` of each row's answer, the reference model's
``ref`` and r = pi - ref,

    z0   = max(0, mean of r over the mismatched rows of the micro batch on every rank)   (no gradient)
    loss = desirable_weight   * (1 - sigmoid(beta * (r - z0)))   for a desirable answer
           undesirable_weight * (1 - sigmoid(beta * (z0 - r)))   for an undesirable one

averaged over the examples: TRL's KTOTrainer (loss_type "kto"), whose z0 is the mean of each process's
batch mean (ours: of all examples; the same with equal micro batches). The implicit reward is beta * r.
``kind="apo_zero_unpaired"`` (APO-zero, D'Oosterlinck et al. 2024, as TRL's) drops z0: 1 - sigmoid(beta r)
for a desirable answer, sigmoid(beta r) for an undesirable one; use it when the desirable answers are
better than what the model writes now (the mismatched rows are then not needed, but still scored).
z0 estimates KL(policy || reference) from answers that do not belong to the prompt, so a reward counts
only above what the policy gives any answer.

The reference is the model the run starts from, computed before step 1 for both rows of every example
and kept in ``output_dir/kto_reference.json``, as DPO's (engine/preference.py): no second model in memory,
and a resume reads the very numbers back. The mismatched rows share the examples' forward and backward
(their log-probabilities are detached, so they add no gradient, only compute).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from .config import KTO_LOSSES
from .preference import held_out_totals, prepare_reference, sequence_logps

REFERENCE_FILE = "kto_reference.json"
_SUMS = ("examples", "desirable", "reward_desirable", "undesirable", "reward_undesirable", "kl", "batches")


def _all_ranks_mean(values: torch.Tensor, device) -> torch.Tensor:
    """The mean of ``values`` over every rank's (a rank may give none: an evaluation's dummy batch)."""
    if not dist.is_initialized():  # one process, no group (a direct computation)
        return values.float().mean() if values.numel() else torch.zeros((), device=values.device)
    totals = torch.stack([values.sum(), torch.tensor(float(values.numel()), device=values.device)]).double()
    totals = totals.to(device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(totals)
    total, count = totals.tolist()
    return torch.tensor(total / max(count, 1.0), dtype=torch.float32, device=values.device)


@dataclass
class ExampleStats:
    loss: torch.Tensor  # per example
    reward: torch.Tensor  # beta * (pi - ref) per example, detached
    desirable: torch.Tensor
    kl: torch.Tensor  # z0 of the micro batch

    def sums(self) -> torch.Tensor:
        """The _SUMS of this micro batch (detached): counts, summed rewards per verdict, z0 and one batch."""
        good, reward = self.desirable, self.reward
        return torch.stack([torch.tensor(float(reward.numel()), device=reward.device), good.sum().float(),
                            reward[good].sum(), (~good).sum().float(), reward[~good].sum(), self.kl.detach(),
                            torch.ones((), device=reward.device)])


@dataclass
class KTOObjective:
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    kind: str = "kto"
    _window: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KTO_LOSSES:
            raise ValueError(f"kind: expected one of {KTO_LOSSES}, got {self.kind!r}")

    def example_stats(self, engine, batch: dict[str, torch.Tensor], device, real: bool = True) -> ExampleStats:
        """``real``: False for an evaluation's dummy batch, which runs (ZeRO-3) but adds nothing to z0."""
        if "reference_logps" not in batch or "desirable" not in batch:
            raise RuntimeError("a KTO batch needs reference_logps and desirable (KTOObjective.prepare, sft/kto.py)")
        logps, _ = sequence_logps(engine, batch, device)
        reference = batch["reference_logps"].to(device=logps.device, dtype=torch.float32).reshape(-1)
        ratios = logps - reference
        mismatched = ratios[1::2].detach()
        kl = _all_ranks_mean(mismatched if real else mismatched[:0], device).clamp(min=0)
        ratio, desirable = ratios[0::2], batch["desirable"].to(logps.device)
        baseline = kl if self.kind == "kto" else torch.zeros_like(kl)
        gain = torch.where(desirable, ratio - baseline, baseline - ratio)
        weight = torch.where(desirable, torch.tensor(self.desirable_weight, device=logps.device),
                             torch.tensor(self.undesirable_weight, device=logps.device))
        loss = weight * (1 - torch.sigmoid(self.beta * gain))
        return ExampleStats(loss, self.beta * ratio.detach(), desirable, kl)

    def loss(self, engine, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss over the batch's examples, number of examples): the engine's loss contract."""
        stats = self.example_stats(engine, batch, device)
        sums = stats.sums()
        self._window = sums if self._window is None else self._window + sums
        return stats.loss.sum(), torch.tensor(stats.loss.numel(), device=stats.loss.device)

    def train_metrics(self, device) -> dict[str, float]:
        """z0 and the mean reward of each verdict over every rank's examples since the last log line."""
        sums = self._window if self._window is not None else torch.zeros(len(_SUMS))
        sums = sums.to(device if dist.get_backend() == "nccl" else "cpu", torch.float64)
        dist.all_reduce(sums)
        self._window = None
        return _metrics("train", dict(zip(_SUMS, sums.tolist())))

    def prepare(self, engine, datasets: dict[str, Any], collate_fn: Callable, batch_size: int, output_dir: str | Path,
                resumed: bool, data_fingerprint: str | None, device, progress: bool = True) -> None:
        prepare_reference(engine, datasets, collate_fn, batch_size, Path(output_dir) / REFERENCE_FILE, resumed,
                          data_fingerprint, device, progress, "KTO", "examples")

    def evaluate(self, engine, dataset: Any, collate_fn: Callable, batch_size: int, max_batches: int | None,
                 device) -> dict[str, float]:
        """Mean KTO loss, z0 and the mean reward of each verdict over the held-out examples."""
        loss, *rest = held_out_totals(engine, dataset, collate_fn, batch_size, max_batches, device, 1 + len(_SUMS),
                                      lambda batch, real: self.example_stats(engine, batch, device, real))
        sums = dict(zip(_SUMS, rest))
        return {"eval/loss": loss / max(sums["examples"], 1.0), **_metrics("eval", sums),
                "eval/examples": sums["examples"]}


def _metrics(split: str, sums: dict[str, float]) -> dict[str, float]:
    """z0 (batches are counted per rank, and each rank's z0 is the same all-rank value) and the mean reward
    of each verdict that has examples (a log window may hold one verdict only)."""
    out = {f"{split}/kl": sums["kl"] / max(sums["batches"], 1.0)}
    for verdict in ("desirable", "undesirable"):
        if sums[verdict]:
            out[f"{split}/reward_{verdict}"] = sums[f"reward_{verdict}"] / sums[verdict]
    return out
