"""Mixture-of-experts models (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, GPT-OSS): the routers while training.

    moe.aux_loss_coef=0.001 moe.balance=global_batch moe.z_loss_coef=0 moe.train_router=true   # the defaults

Why: a router that sends most tokens to a few experts wastes the rest, and continued pretraining on a new
language shifts what the routers see. Models are trained with a load-balancing loss beside the language loss
(Switch Transformer): per layer, E · Σ_i f_i · P_i, where f_i is the share of the top-k choices that went to
expert i and P_i the mean router probability of i. transformers computes it only when ``output_router_logits``
is set, from all layers' choices pooled, and each rank over its own micro batch. Here, from the routers'
outputs directly (the engine's loss never sees transformers' ``aux_loss``):

- per layer, then averaged over layers. Pooled, a layer that sends everything to expert 0 and one that sends
  everything to expert 1 look balanced together; per layer they do not. With every layer alike the two agree,
  so the model's ``router_aux_loss_coef`` keeps its scale (k at perfect balance, for top-k routing).
- ``balance: global_batch`` (default) sums the choices f_i over every rank's micro batch (one all-reduce of
  layers x experts counts per micro batch): Qwen3 was trained so ("Demons in the detail", Qiu et al. 2025).
  A micro batch of one domain need not spread evenly over experts, only the whole batch must; the local loss
  pushed experts towards sameness. ``micro_batch`` is transformers' (each rank its own).
- padding is not counted (the rows' 2-D attention_mask, where the batch has one).
- ``z_loss_coef``: the router z-loss (ST-MoE, Zoph et al. 2022), the mean squared log-sum-exp of the router
  logits: keeps them small, so bf16 rounding does not flip choices.
- ``train_router: false`` keeps every router as it is in mode=full (a common choice for SFT of an MoE model).

Logged with every line: ``moe/aux_loss`` (the balance term before its coefficient), ``moe/max_load`` (the
busiest expert's tokens over the mean, worst layer; 1.0 = even) and ``moe/idle_experts`` (layer-expert pairs
that got no token in the window, all ranks together).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from zhllama.errors import UserError

from .config import TrainConfig

MOE_DEFAULTS = {"aux_loss_coef": None, "balance": "global_batch", "z_loss_coef": 0.0, "train_router": True}


def _recorder(model) -> tuple[type, int] | None:
    """(router class, index of the logits in its output) as transformers >= 5 records router_logits."""
    recorders = getattr(model, "_can_record_outputs", None) or {}
    entry = recorders.get("router_logits")
    if entry is None:
        return None
    if isinstance(entry, type):
        return entry, 0
    target = getattr(entry, "target_class", None)
    return (target, getattr(entry, "index", 0) or 0) if isinstance(target, type) else None


def routers_of(model) -> tuple[list[torch.nn.Module], int]:
    """The router of every mixture-of-experts layer in layer order, and where its output holds the logits."""
    found = _recorder(model)
    if found is None:
        return [], 0
    cls, index = found
    return [m for m in model.modules() if isinstance(m, cls)], index


def is_moe_config(config) -> bool:
    """Whether a model config describes routed experts (before the model is built)."""
    text = getattr(config, "get_text_config", lambda: config)()
    experts = getattr(text, "num_experts", None) or getattr(text, "num_local_experts", None)
    return bool(experts) and bool(getattr(text, "num_experts_per_tok", None))


def check_config(cfg: TrainConfig, config) -> None:
    """Refuse MoE settings for a dense model and settings MoE layers cannot take (before anything is built)."""
    changed = [f"moe.{k}" for k, v in MOE_DEFAULTS.items() if getattr(cfg.moe, k) != v]
    if not is_moe_config(config):
        if changed:
            raise UserError(f"{', '.join(changed)}: {cfg.model.path} is a dense model (no routed experts in its "
                            f"config.json); remove these settings")
        return
    if cfg.model.mlp_chunk_tokens:
        raise UserError("model.mlp_chunk_tokens tiles dense MLPs; this model's MLPs are mixture-of-experts blocks "
                        "(their experts see routed tokens only) and its routers' statistics need whole rows: set 0")


class RouterBalance:
    """Hooks on the routers that sum, per layer, the experts' choices and probabilities of the micro batch
    being trained (``collecting``), and the balance and z losses made from them (``added_to``)."""

    def __init__(self, model, routers: list[torch.nn.Module], index: int, top_k: int, aux_coef: float,
                 z_coef: float, global_batch: bool, reduce_sum: Callable[[torch.Tensor], None] | None = None):
        self.routers, self.index, self.top_k = routers, index, top_k
        self.aux_coef, self.z_coef, self.global_batch = aux_coef, z_coef, global_batch
        self.reduce_sum = reduce_sum or dist.all_reduce
        self.layer_of = {id(m): i for i, m in enumerate(routers)}
        self.active = False
        self._mask: torch.Tensor | None = None
        self._reset_micro()
        self._reset_window()
        for router in routers:
            router.register_forward_hook(self._on_router)
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        decoder.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def _reset_micro(self) -> None:
        self._counts: list[Any] = [0.0] * len(self.routers)
        self._probs: list[Any] = [0.0] * len(self.routers)
        self._z: list[Any] = [0.0] * len(self.routers)
        self._tokens: list[Any] = [0.0] * len(self.routers)

    def _reset_window(self) -> None:
        self.window_counts: Any = 0.0
        self.window_aux: Any = 0.0
        self.window_z: Any = 0.0
        self.window_micro = 0

    def _on_forward(self, module, args, kwargs) -> None:
        mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
        self._mask = None
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and (ids is None or ids.shape == mask.shape):
            self._mask = mask.reshape(-1) != 0

    def _on_router(self, module, args, output) -> None:
        if not self.active or not torch.is_grad_enabled():  # evaluation, references, recomputation: not counted
            return
        logits = output[self.index] if isinstance(output, (tuple, list)) else output
        logits = logits.reshape(-1, logits.shape[-1]).float()
        keep = self._mask if self._mask is not None and self._mask.numel() == logits.shape[0] else None
        weight = torch.ones(logits.shape[0], device=logits.device) if keep is None else keep.to(logits.device).float()
        chosen = logits.detach().topk(self.top_k, dim=-1).indices
        counts = torch.zeros(logits.shape[-1], device=logits.device)
        counts.scatter_add_(0, chosen.reshape(-1), weight.repeat_interleave(self.top_k))
        layer = self.layer_of[id(module)]
        self._counts[layer] = self._counts[layer] + counts
        self._probs[layer] = self._probs[layer] + (logits.softmax(-1) * weight[:, None]).sum(0)
        self._z[layer] = self._z[layer] + (torch.logsumexp(logits, -1).square() * weight).sum()
        self._tokens[layer] = self._tokens[layer] + weight.sum()

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Count the routers' choices in the forward passes of one micro batch (every objective's passes)."""
        self._reset_micro()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(balance, z) of the micro batch just collected: each per layer, averaged over layers."""
        if any(isinstance(t, float) for t in self._tokens):
            raise RuntimeError(f"moe: {sum(isinstance(t, float) for t in self._tokens)} of {len(self.routers)} "
                               f"routers did not run in this micro batch's training forward pass")
        counts, tokens = torch.stack(self._counts), torch.stack(self._tokens)
        local = counts
        if self.global_batch:  # every rank calls this once per micro batch, so the collective lines up
            both = torch.cat([counts, tokens[:, None]], dim=1)
            self.reduce_sum(both)
            counts, tokens_all = both[:, :-1], both[:, -1]
        else:
            tokens_all = tokens
        share = counts / tokens_all.clamp(min=1)[:, None]  # top-k choices per token that went to each expert
        mean_prob = torch.stack(self._probs) / tokens.clamp(min=1)[:, None]
        balance = (counts.shape[1] * (share * mean_prob).sum(-1)).mean()
        z = (torch.stack(self._z) / tokens.clamp(min=1)).mean()
        self.window_counts = self.window_counts + local
        self.window_aux = self.window_aux + balance.detach()
        self.window_z = self.window_z + z.detach()
        self.window_micro += 1
        self._reset_micro()
        return balance, z

    def added_to(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the weighted router losses of the micro batch just collected."""
        balance, z = self.losses()
        extra = self.aux_coef * balance + (self.z_coef * z if self.z_coef else 0.0)
        return loss + extra if self.aux_coef or self.z_coef else loss

    def metrics(self, dev) -> dict[str, float]:
        """The window's balance over all ranks (a collective: every rank logs on the same steps)."""
        if not self.window_micro:
            return {}
        counts = torch.as_tensor(self.window_counts, device=dev, dtype=torch.float32)
        sums = torch.stack([torch.as_tensor(self.window_aux, device=dev, dtype=torch.float32),
                            torch.as_tensor(self.window_z, device=dev, dtype=torch.float32),
                            torch.tensor(float(self.window_micro), device=dev)])
        if dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self._reset_window()
        mean = counts.mean(-1, keepdim=True).clamp(min=1e-9)
        out = {"moe/aux_loss": float(sums[0] / sums[2]), "moe/max_load": float((counts / mean).max()),
               "moe/idle_experts": float((counts == 0).sum())}
        if self.z_coef:
            out["moe/z_loss"] = float(sums[1] / sums[2])
        return out


class _NoRouters:
    """Dense models: nothing collected, nothing added."""

    active = False

    def collecting(self):
        return nullcontext()

    def added_to(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def metrics(self, dev) -> dict[str, float]:
        return {}


NO_ROUTERS = _NoRouters()


def install(cfg: TrainConfig, model, module) -> tuple[Any, str]:
    """Hooks on ``model``'s routers (``module``: what trains, a PEFT wrapper or the model); freezes them when
    ``moe.train_router`` is false. Returns (the balance, a log line: "" for a dense model)."""
    if not is_moe_config(model.config):
        return NO_ROUTERS, ""
    routers, index = routers_of(model)
    text = model.config.get_text_config()
    coef = cfg.moe.aux_loss_coef
    source = "moe.aux_loss_coef"
    if coef is None:
        coef, source = float(getattr(text, "router_aux_loss_coef", 0.0) or 0.0), "the model's router_aux_loss_coef"
    if not routers:
        if coef or cfg.moe.z_loss_coef or not cfg.moe.train_router:
            raise UserError(f"{type(model).__name__}: the routers of this mixture-of-experts model cannot be found "
                            f"(transformers >= 5 names them in _can_record_outputs), and {source} = {coef:g}, "
                            f"moe.z_loss_coef and moe.train_router need them: use transformers >= 5, or train "
                            f"without them (moe.aux_loss_coef=0)")
        return NO_ROUTERS, "mixture of experts: routers not found (transformers < 5); no load-balancing loss"
    if not cfg.moe.train_router:
        for router in routers:
            router.requires_grad_(False)
    balance = RouterBalance(model, routers, index, int(text.num_experts_per_tok), coef, cfg.moe.z_loss_coef,
                            cfg.moe.balance == "global_batch")
    experts = getattr(text, "num_experts", None) or getattr(text, "num_local_experts", None)
    trained = "trained" if cfg.mode == "full" and cfg.moe.train_router else "kept as they are"
    line = (f"mixture of experts: {len(routers)} routed layers x {experts} experts, top-{text.num_experts_per_tok}; "
            f"load-balancing loss x {coef:g} ({source}), counted over "
            f"{'every rank' if cfg.moe.balance == 'global_batch' else 'each rank'}'s micro batch"
            + (f"; router z-loss x {cfg.moe.z_loss_coef:g}" if cfg.moe.z_loss_coef else "") + f"; routers {trained}")
    return balance, line
