"""The state the training loop carries: steps and metrics, the log window, the evaluation cadence."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from .config import TrainConfig
from .evaluate import evaluate
from .sequence_parallel import WHOLE_ROWS, SequenceSplit
from .tracking import Tracker
from .watch import Watch


def _mean_over_ranks(loss_sum: torch.Tensor, count: torch.Tensor) -> float:
    t = torch.stack([loss_sum.double(), count.double()])
    if dist.get_backend() != "nccl":
        t = t.cpu()
    dist.all_reduce(t)
    return (t[0] / t[1].clamp(min=1)).item()


@dataclass
class FitState:
    step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped_by_guard: list[dict[str, Any]] = field(default_factory=list)  # eval.guard_action=stop tripped


@dataclass
class Evaluation:
    """The validation split plus the watch's named sets, benchmarks and guard (engine/watch.py)."""

    cfg: TrainConfig
    engine: Any
    eval_ds: Any
    collate_fn: Callable
    eval_characters: int | None
    watch: Watch | None
    tracker: Tracker
    dev: Any
    total_steps: int
    objective: Any | None = None  # validates with its own metrics when set (engine/preference.py)
    split: SequenceSplit = WHOLE_ROWS  # sequence parallelism: validation rows split like training's

    @property
    def active(self) -> bool:
        return self.eval_ds is not None or (self.watch is not None and self.watch.active)

    def validation(self) -> dict[str, float]:
        batch_size = self.cfg.eval.micro_batch_size or self.cfg.batch.micro_batch_size
        if self.objective is not None:
            return self.objective.evaluate(self.engine, self.eval_ds, self.collate_fn, batch_size,
                                           self.cfg.eval.max_batches, self.dev)
        return evaluate(self.engine, self.eval_ds, self.collate_fn, batch_size, self.cfg.eval.max_batches,
                        self.eval_characters, self.dev, self.split)

    def ensure_base(self, state: FitState) -> None:
        if self.watch is not None:
            self.watch.ensure_base(self.engine, state.step, self.dev,
                                   None if self.eval_ds is None else self.validation)

    def run(self, state: FitState) -> None:
        out = self.validation() if self.eval_ds is not None else {}
        if self.watch is not None:
            out.update(self.watch.run(self.engine, state.step, self.dev, force_all=state.step == self.total_steps))
        self.tracker.log(state.step, out)
        state.metrics.update(out)
        if self.watch is not None and self.watch.check_guard(state.step, out) and self.cfg.eval.guard_action == "stop":
            state.stopped_by_guard = self.watch.trips


class Window:
    """Loss, tokens and time since the last log line (tensors: no device sync per micro step)."""

    def __init__(self, objective: Any | None = None, routers: Any | None = None) -> None:
        self.objective = objective  # may add its own metrics to each log line (DPO: reward accuracy)
        self.routers = routers  # an MoE model's load balance (engine/moe.py): moe/aux_loss, moe/max_load
        self._reset()

    def _reset(self) -> None:
        self.loss, self.count, self.tokens, self.start = 0.0, 0.0, 0, time.perf_counter()

    def add(self, loss_sum: torch.Tensor, count: torch.Tensor, tokens: int) -> None:
        self.loss = self.loss + loss_sum.detach()
        self.count = self.count + count
        self.tokens += tokens

    def flush(self, engine, dev, lr_used: float) -> dict[str, float]:
        loss = _mean_over_ranks(torch.as_tensor(self.loss, device=dev), torch.as_tensor(self.count, device=dev))
        elapsed = time.perf_counter() - self.start
        out = {"train/loss": loss, "train/lr": lr_used, "train/tokens_per_s": self.tokens / max(elapsed, 1e-9)}
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            out["train/grad_norm"] = float(grad_norm)
        if hasattr(self.objective, "train_metrics"):
            out.update(self.objective.train_metrics(dev))
        if self.routers is not None:
            out.update(self.routers.metrics(dev))
        if torch.cuda.is_available():  # what a user sizing batch and ZeRO stage needs to see
            out["train/peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self._reset()
        return out
