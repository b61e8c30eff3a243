"""NaN/inf guards: a non-finite loss stops the run naming the step; non-finite weights are never saved.

Why not check every step with a sync: the loss of each micro batch is folded into a tensor
(``LossGuard.observe``, no device sync) and the ranks agree on it only where it matters —
before every log line, every checkpoint and the final model — so nothing written after the first
bad step is ever kept, and the message still names that step.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist

from zhllama.errors import UserError

_NONE = 2**62  # "no bad step yet" (a min-reduction identity that fits int64)
HINT = ("lower optim.lr (or set optim.max_grad_norm), check the data, or train in float32; "
        "nothing after that step was saved")


def _world_min(value: torch.Tensor) -> int:
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone() if dist.get_backend() == "nccl" else value.cpu()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def _world_sum(count: int) -> int:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([count], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return int(t.item())
    return count


class LossGuard:
    """Remembers the first optimizer step whose loss (or loss sum) was NaN or infinite."""

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """``step`` counts from 1 (the step this loss belongs to); no device sync."""
        bad = ~torch.isfinite(loss.detach()).all()
        here = torch.where(bad, step, _NONE)  # scalars: no host-to-device copy (a GPU would sync on it)
        self.first_bad = here if self.first_bad is None else torch.minimum(self.first_bad, here)

    def check(self) -> None:
        """Collective: UserError on every rank when any rank saw a non-finite loss."""
        if self.first_bad is not None:
            first = _world_min(self.first_bad)
            if first < _NONE:
                raise UserError(f"training stopped: the loss became non-finite (NaN/inf) at step {first}; {HINT}")


def check_grad_norm(grad_norm: float | None, step: int) -> None:
    """The global gradient norm is the same number on every rank: no collective needed."""
    if grad_norm is not None and not torch.isfinite(torch.tensor(float(grad_norm))):
        raise UserError(f"training stopped: the gradient norm became non-finite ({grad_norm}) at step {step}; {HINT}")


def nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """'name (k of n values)' for every floating tensor holding NaN or inf."""
    out = []
    for name, t in named:
        if t is None or not t.is_floating_point():
            continue
        bad = int((~torch.isfinite(t)).sum().item())
        if bad:
            out.append(f"{name} ({bad} of {t.numel()} values)")
    return out


def local_partitions(module) -> Iterable[tuple[str, torch.Tensor]]:
    """The parameter data this rank holds (ZeRO-3: its ``ds_tensor`` partition, no gather)."""
    for name, p in module.named_parameters():
        yield name, (p.ds_tensor if hasattr(p, "ds_tensor") else p.data)


def check_weights(module, where: str) -> None:
    """Collective: refuse (every rank) when any rank's share of the weights holds NaN/inf."""
    mine = nonfinite(local_partitions(module))
    if _world_sum(len(mine)):
        shown = "; ".join(mine[:5]) or "on another rank"
        raise UserError(f"{where}: the model's weights hold non-finite values (NaN/inf): {shown}; {HINT}")


def check_state_dict(state_dict: dict[str, Any] | None, where: str) -> None:
    """Collective: rank 0 holds the consolidated state dict; every rank raises when it is non-finite."""
    bad = nonfinite(state_dict.items()) if state_dict is not None else []
    found = [bad]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(found, src=0)
    if found[0]:
        listed = "; ".join(found[0][:5]) + (f"; ... {len(found[0]) - 5} more" if len(found[0]) > 5 else "")
        raise UserError(f"{where}: not saved, the final weights hold non-finite values (NaN/inf): {listed}; {HINT}")
