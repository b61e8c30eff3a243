"""Sequence parallelism (DeepSpeed-Ulysses): a group of ranks shares each sequence, split along its length.

    deepspeed.sequence_parallel=4      # `pretrain train` / `sft train`: 4 ranks per sequence

Why: with ZeRO-3 the weights, gradients and Adam states are spread over the ranks, but every rank still
holds the activations of whole sequences. At 32K-128K tokens (long-context continued pretraining, long
documents in SFT) those alone exceed a GPU, gradient checkpointing or not. Here each rank of a group keeps
1/size of the positions, so activation memory per rank falls by the group's size.

How (Jacobs et al. 2023, "DeepSpeed Ulysses"):

- The ranks form groups of ``size`` consecutive ranks; the ranks of a group read the same micro batch
  (the run has world / size *data ranks*), and each keeps positions [r·S/size, (r+1)·S/size) of it. The
  targets are shifted on the whole row first, so the token after a rank's last position is still its target.
- Embeddings, norms, MLPs and the loss are per position and run on the local positions. Attention needs
  every position: an all-to-all turns (all heads, local positions) into (heads/size, all positions) for
  q, k and v; the kernel runs on whole sequences; a second all-to-all turns its output back.
- The kernel gets the mask transformers builds for the whole row (``create_causal_mask`` from the whole
  row's position_ids and padding), never the one the model built from its local slice: packed documents
  stay apart with sdpa, flex_attention and flash-attention (varlen, from the whole row's position_ids).
  DeepSpeed's own ``UlyssesSPAttentionHF`` drops the mask for sdpa and flex, so packed documents there
  attend to each other (benchmarks/sequence_parallel.py shows it).
- Gradients: each rank's loss is its positions' summed cross-entropy times size / (the whole row's
  labelled tokens). DeepSpeed averages gradients over all ranks, so the step equals the one a single rank
  takes on the whole row (the all-to-alls carry each rank's share of the other positions' gradients).

The attention replacement is active only inside ``SequenceSplit.micro`` (forward and backward, so that
gradient checkpointing's recomputation is split the same way); any other forward (generation, the
benchmarks watched during training) runs whole sequences on each rank as before.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from zhllama.errors import UserError
from zhllama.model_folder import read_model_config
from zhllama.rope import text_config

from .loss import IGNORE_INDEX, shift_labels


@dataclass(frozen=True)
class Groups:
    """This rank's sequence group and its place in the data order."""

    size: int
    group: Any  # the process group of the ranks sharing this rank's sequences
    rank: int  # this rank's place in its group: which slice of the positions it keeps
    data_rank: int  # which micro batches the group reads (engine/data.py)
    data_ranks: int  # world / size: ranks that read different data


def make_groups(size: int) -> Groups:
    """Every rank must call this (new_group is collective); consecutive ranks share sequences, so a group
    stays inside one node when the node's GPU count is a multiple of ``size``."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise UserError(f"deepspeed.sequence_parallel={size} does not divide the {world} ranks; run on a multiple "
                        f"of {size} ranks or choose a divisor of {world}")
    mine = None
    if size > 1:
        for start in range(0, world, size):
            group = dist.new_group(list(range(start, start + size)))
            if start <= rank < start + size:
                mine = group
    return Groups(size, mine, rank % size, rank // size, world // size)


def check_model(model_path: str, size: int) -> None:
    """Refuse, before anything loads, a model whose heads cannot be split over ``size`` ranks."""
    if size == 1:
        return
    config = text_config(read_model_config(Path(model_path)))
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    if not isinstance(heads, int) or heads % size:
        raise UserError(f"deepspeed.sequence_parallel={size}: {model_path} has {heads} attention heads, which "
                        f"{size} ranks cannot share equally; choose a divisor of {heads}")
    if kv_heads % size and size % kv_heads:
        raise UserError(f"deepspeed.sequence_parallel={size}: {model_path} has {kv_heads} key/value heads; "
                        f"the group size must divide them or be a multiple of them")


class _AllToAll(torch.autograd.Function):
    """Chunk j of dim 0 goes to rank j of the group, rank j's chunk i arrives as chunk j on rank i. The
    exchange is its own adjoint, so backward is the same exchange of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _exchange(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad, ctx.group), None


def _exchange(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)  # of the contiguous copy: empty_like keeps a transposed input's strides
    dist.all_to_all_single(out, x, group=group)
    return out


def heads_to_ranks(x: torch.Tensor, size: int, group) -> torch.Tensor:
    """(B, H, S/size, D) local positions of all heads -> (B, H/size, S, D) all positions of this rank's heads."""
    b, h, s, d = x.shape
    parts = x.reshape(b, size, h // size, s, d).transpose(0, 1)  # chunk j: heads for rank j
    got = _AllToAll.apply(parts, group)  # chunk j: rank j's positions of this rank's heads
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * s, d)


def positions_to_ranks(x: torch.Tensor, size: int, group) -> torch.Tensor:
    """(B, S, H/size, D) attention output of this rank's heads -> (B, S/size, H, D) this rank's positions."""
    b, s, h, d = x.shape
    parts = x.reshape(b, size, s // size, h, d).transpose(0, 1)  # chunk j: rank j's positions
    got = _AllToAll.apply(parts, group)  # chunk j: this rank's positions of rank j's heads
    return got.permute(1, 2, 0, 3, 4).reshape(b, s // size, size * h, d)


@dataclass
class _Row:
    """What the attention of the micro batch being split needs about the whole rows."""

    groups: Groups
    mask: Any  # transformers' mask for the whole rows, in the kernel's format (None: plain causal)
    positions: torch.Tensor  # the whole rows' position_ids (flash-attention finds the documents in them)


_ACTIVE: _Row | None = None  # set inside SequenceSplit.micro only


def _split_attention(inner, row: _Row, module, query, key, value, *args, **kwargs):
    size, group = row.groups.size, row.groups.group
    kv_heads = key.shape[1]
    if kv_heads < size:  # fewer key/value heads than ranks: each rank gets a copy of the one its queries use
        key = key.repeat_interleave(size // kv_heads, dim=1)
        value = value.repeat_interleave(size // kv_heads, dim=1)
    query, key, value = (heads_to_ranks(t, size, group) for t in (query, key, value))
    kwargs["position_ids"] = row.positions
    saved = getattr(module, "num_key_value_groups", None)
    if saved is not None:  # the kernels repeat k/v by this; with copied k/v heads the ratio changes
        module.num_key_value_groups = query.shape[1] // key.shape[1]
    try:
        out, _ = inner(module, query, key, value, row.mask, *args, **kwargs)
    finally:
        if saved is not None:
            module.num_key_value_groups = saved
    return positions_to_ranks(out, size, group), None


def install_attention(kernel: str) -> None:
    """Route transformers' ``kernel`` through the split attention while a micro batch is split (idempotent)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS[kernel]
    inner = getattr(current, "zhllama_inner", current)

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        row = _ACTIVE
        if row is None:
            return inner(module, query, key, value, attention_mask, *args, **kwargs)
        return _split_attention(inner, row, module, query, key, value, *args, **kwargs)

    attention.zhllama_inner = inner
    ALL_ATTENTION_FUNCTIONS[kernel] = attention


def whole_row_mask(config, batch: dict[str, torch.Tensor], dtype: torch.dtype, device) -> Any:
    """The mask transformers builds for these whole rows (padding and packed documents), for ``config``'s kernel."""
    from transformers.masking_utils import create_causal_mask

    ids = batch["input_ids"]
    shape_only = torch.empty((*ids.shape, 1), dtype=dtype, device=device)
    mask = batch.get("attention_mask")
    return create_causal_mask(config=config, inputs_embeds=shape_only,
                              attention_mask=None if mask is None else mask.to(device),
                              past_key_values=None, position_ids=batch["position_ids"].to(device))


def pad_rows(batch: dict[str, torch.Tensor], multiple: int) -> dict[str, torch.Tensor]:
    """input_ids, position_ids, targets (and attention_mask) of the whole rows, padded to a multiple of
    ``multiple`` positions. The padding is unlabelled and starts positions at 0, so it is a document of its own."""
    ids = batch["input_ids"]
    rows, length = ids.shape
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(length).expand(rows, length)
    targets = batch["targets"] if "targets" in batch else shift_labels(batch["labels"])
    out = {"input_ids": ids, "position_ids": positions, "targets": targets}
    if batch.get("attention_mask") is not None:
        out["attention_mask"] = batch["attention_mask"]
    pad = -length % multiple
    if pad:
        fill = {"input_ids": 0, "targets": IGNORE_INDEX, "attention_mask": 0}
        out = {k: F.pad(v, (0, pad), value=fill[k]) if k in fill else v for k, v in out.items()}
        out["position_ids"] = torch.cat([positions, torch.arange(pad).expand(rows, pad)], dim=1)
    return out


class SequenceSplit:
    """Splits micro batches for ``groups`` (``groups.size`` 1: passes them through)."""

    def __init__(self, groups: Groups, model_config=None, dtype: torch.dtype = torch.float32) -> None:
        self.groups, self.config, self.dtype = groups, model_config, dtype

    @property
    def active(self) -> bool:
        return self.groups.size > 1

    @contextmanager
    def micro(self, batch: dict[str, torch.Tensor], device) -> Iterator[tuple[dict, float | None]]:
        """(this rank's part of ``batch``, the factor of its summed loss for backward: None = divide by its
        own token count). Keep backward inside: gradient checkpointing recomputes the split attention."""
        global _ACTIVE
        if not self.active:
            yield batch, None
            return
        size, rank = self.groups.size, self.groups.rank
        whole = pad_rows(batch, size)
        local_len = whole["input_ids"].shape[1] // size
        part = slice(rank * local_len, (rank + 1) * local_len)
        local = {k: whole[k][:, part] for k in ("input_ids", "position_ids", "targets")}
        labelled = int((whole["targets"] != IGNORE_INDEX).sum())
        _ACTIVE = _Row(self.groups, whole_row_mask(self.config, whole, self.dtype, device),
                       whole["position_ids"].to(device))
        try:
            yield local, size / max(labelled, 1)
        finally:
            _ACTIVE = None


WHOLE_ROWS = SequenceSplit(Groups(1, None, 0, 0, 1))  # no sequence parallelism: micro batches pass through
