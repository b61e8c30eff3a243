"""The weights while a training run writes text (GRPO's answers): under ZeRO-3, every weight gathered once for a
whole ``generate`` call, or left partitioned.

Partitioned, each decoder layer's weights are gathered from all ranks at every generated token (a forward per
token), and every rank must run forwards until all ranks' answers are done (``synced_gpus``). Gathered once
(``grpo.gather_for_generation``, TRL's ``ds3_gather_for_generation``), each rank holds the whole model in the
training dtype for the call, ZeRO-3's per-module hooks are taken off (they would release each layer after its
forward and gather it again at the next token), and the ranks generate independently; the hooks are put back
and the weights partitioned again afterwards. It needs the whole model to fit on one device beside the
training state, as ZeRO-2 does; where it does not (a 70B model on 80 GB cards), leave it off.
Under ZeRO-0/1/2 every rank holds the whole model anyway: nothing to gather, nothing to sync.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.distributed as dist


def zero_stage(engine) -> int:
    """The engine's ZeRO stage (0 for a bare module)."""
    return engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0


@contextmanager
def weights_for_generation(engine, gather: bool) -> Iterator[bool]:
    """Yields whether the ranks must generate in step (``synced_gpus``: the weights stay partitioned)."""
    several = dist.is_initialized() and dist.get_world_size() > 1
    if zero_stage(engine) != 3:
        yield False
        return
    if not gather:
        yield several
        return
    import deepspeed

    offload = engine.optimizer.parameter_offload  # ZeRO-3's per-module fetch and release hooks
    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        for param in module.parameters():
            param.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield False
        finally:
            offload._register_deepspeed_module(offload.module)
