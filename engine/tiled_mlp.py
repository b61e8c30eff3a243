"""The decoder layers' MLPs run over a row's positions in tiles: ``model.mlp_chunk_tokens``.

    model.mlp_chunk_tokens=8192     # `pretrain train` / `sft train`: at most 8,192 positions per MLP pass

Why: at long contexts the MLP's intermediate activations are the largest tensors of a layer: gate, up, their
activation and product, each positions x intermediate_size (Llama-3.1-8B: 14,336 wide, 3.5x the hidden size).
Gradient checkpointing keeps one layer's worth alive while that layer is recomputed; at 64K positions per GPU
that one layer's MLP still holds ~7.5 GB in bf16. Tiled, each tile of positions is computed and, in training,
recomputed in backward from its input alone (a checkpoint per tile), so one tile's intermediates exist at a
time. The MLP is per position, so the result is the same numbers; the cost is one more forward of the MLP per
training step (each tile recomputed in backward: about a third more MLP compute). ALST (Arctic Long Sequence Training, Bekman et al. 2025) tiles the MLP the same way beside
sequence parallelism (engine/sequence_parallel.py), which splits the positions over ranks first.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def mlp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers' feed-forward blocks (``...layers.N.mlp`` in LLaMA, Mistral, Qwen and their kin)."""
    return [m for name, m in model.named_modules() if name.endswith(".mlp") and ".layers." in f".{name}"]


def install_tiled_mlp(model: torch.nn.Module, chunk_tokens: int) -> int:
    """Tile every decoder MLP of ``model`` to ``chunk_tokens`` positions (0: leave them); returns how many."""
    if chunk_tokens <= 0:
        return 0
    mlps = mlp_modules(model)
    for mlp in mlps:
        mlp.forward = _tiled(mlp.forward, chunk_tokens)
    return len(mlps)


def _tiled(forward, chunk_tokens: int):
    def tiled_forward(hidden: torch.Tensor) -> torch.Tensor:
        rows, positions = hidden.shape[0], hidden.shape[1]
        per_tile = max(1, chunk_tokens // max(rows, 1))
        if positions <= per_tile:
            return forward(hidden)
        tiles = hidden.split(per_tile, dim=1)
        if torch.is_grad_enabled() and hidden.requires_grad:
            return torch.cat([checkpoint(forward, tile, use_reentrant=False) for tile in tiles], dim=1)
        return torch.cat([forward(tile) for tile in tiles], dim=1)

    return tiled_forward
