"""The reference model of GRPO's KL penalty (``grpo.beta`` > 0): the model the run started from, frozen.

Its per-token log-probabilities of each answer, of the same distribution as the policy's (logits divided
by the sampling temperature, as TRL does), come from one of two places:

* ``AdapterOff`` — a LoRA run whose adapters are the only trained weights: the policy with its adapters
  switched off (PEFT's ``disable_adapter``) is the starting model. No second model in memory (TRL's way).
* ``FrozenCopy`` — full training, or LoRA beside embeddings trained in place (switching the adapters off
  would keep the trained embeddings): a second copy of the starting model, loaded once, frozen, in eval
  mode. Under ZeRO-3 it is partitioned like the policy (DeepSpeed without an optimizer, as TRL prepares its
  reference); otherwise each rank holds it whole (ZeRO stage 0).

A resumed run loads the same starting model again. A ``FrozenCopy`` may move towards the policy every
``grpo.ref_sync_steps`` steps (``sync_from``: ref <- alpha x policy + (1 - alpha) x ref, TRL's
``sync_ref_model``; alpha 1 resets it to the policy, as ProRL does): then its weights go into checkpoints
(``state``/``load_state``) and a resumed run takes them back.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from .preference import labelled_token_logps


class AdapterOff:
    """The policy's own forward with its LoRA adapters switched off."""

    describe = "the policy with its LoRA adapters switched off (no second model)"

    def build(self, engine) -> None:
        pass

    @torch.no_grad()
    def __call__(self, engine, batch: dict[str, torch.Tensor], device, temperature: float) -> torch.Tensor:
        module = getattr(engine, "module", engine)
        with module.disable_adapter():
            return labelled_token_logps(engine, batch, device, temperature)[0]


class FrozenCopy:
    """A frozen second copy of the starting model; ``load(ds_config) -> (model, keepalive)`` builds it."""

    describe = "a frozen copy of the starting model"

    def __init__(self, load: Callable[[dict], tuple[torch.nn.Module, object]]):
        self.load = load
        self.engine = None

    def build(self, engine) -> None:
        """Load the copy beside the policy's engine, partitioned alike under ZeRO-3 (collective: every rank)."""
        import deepspeed

        config = getattr(engine, "config", None)  # a DeepSpeed engine's is its JSON (a bare HF model's is not)
        config = copy.deepcopy(config) if isinstance(config, dict) else {}
        if not config:  # a bare model (tests, cross-checks): the copy stays a plain module
            self.engine = self.load({})[0].eval()
            return
        for key in ("optimizer", "scheduler"):
            config.pop(key, None)
        zero = config.setdefault("zero_optimization", {})
        if zero.get("stage") != 3:
            config["zero_optimization"] = {"stage": 0}  # each rank holds it whole: nothing to shard without grads
        model, keepalive = self.load(config)
        model.requires_grad_(False)
        self.engine, *_ = deepspeed.initialize(model=model, config=config)
        self.engine.eval()
        del keepalive

    @torch.no_grad()
    def __call__(self, engine, batch: dict[str, torch.Tensor], device, temperature: float) -> torch.Tensor:
        if self.engine is None:
            raise RuntimeError("FrozenCopy.build(engine) must run before the first step")
        return labelled_token_logps(self.engine, batch, device, temperature)[0]

    def _weights(self) -> dict[str, torch.nn.Parameter]:
        return dict(getattr(self.engine, "module", self.engine).named_parameters())

    @torch.no_grad()
    def sync_from(self, policy_engine, alpha: float) -> None:
        """ref <- alpha x policy + (1 - alpha) x ref, weight by weight (collective under several ranks)."""
        weights = self._weights()
        for name, param in getattr(policy_engine, "module", policy_engine).named_parameters():
            target = weights[name]
            with _gathered([param]), _gathered([target], modify=True) as here:
                if here:
                    target.data.mul_(1 - alpha).add_(param.data.to(target.dtype), alpha=alpha)

    @torch.no_grad()
    def state(self) -> dict[str, torch.Tensor]:
        """The weights, whole, on the CPU, on rank 0 ({} on the others; collective)."""
        out = {}
        for name, param in self._weights().items():
            with _gathered([param]):
                if not dist.is_initialized() or dist.get_rank() == 0:
                    out[name] = param.data.detach().cpu().clone()
        return out

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Rank 0's ``state`` into every rank's copy (collective)."""
        for name, param in self._weights().items():
            with _gathered([param], modify=True) as here:
                if here:
                    param.data.copy_(state[name].to(param.dtype))


@contextmanager
def _gathered(params: list[torch.nn.Parameter], modify: bool = False) -> Iterator[bool]:
    """Holds ``params`` whole; yields whether this rank writes them (``modify``: rank 0 only, and its values then
    reach every rank: ZeRO-3 broadcasts the gathered weights before partitioning them again, whole copies are
    broadcast after)."""
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
            yield rank0 if modify else True
        return
    yield rank0 if modify else True
    if modify and dist.is_initialized() and dist.get_world_size() > 1:
        for param in params:  # whole copies on every rank: rank 0's values everywhere
            dist.broadcast(param.data, 0)


def token_kl(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per token, exp(ref - pi) - (ref - pi) - 1: an unbiased, never negative estimate of KL(pi || ref)
    (Schulman's k3; GRPO's paper and TRL). Its gradient is (1 - exp(ref - pi)) grad(pi)."""
    gap = reference.to(policy.dtype) - policy
    return torch.exp(gap) - gap - 1


def reference_for(cfg) -> AdapterOff | FrozenCopy:
    """The cheapest exact reference for this run's mode: AdapterOff where only LoRA adapters train, else a copy
    of ``model.path`` loaded as the policy was (dtype, attention, context, the chunked head)."""
    if cfg.mode == "lora" and not cfg.lora.modules_to_save:
        return AdapterOff()

    def load(ds_config: dict):
        from .loss import install_fused_head
        from .model import load_model

        model, keepalive = load_model(cfg, ds_config)
        if cfg.model.fused_loss:
            install_fused_head(model, cfg.model.loss_chunk_tokens)
        return model, keepalive
    return FrozenCopy(load)
