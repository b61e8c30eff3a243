"""Noisy input embeddings while training: NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings
Improve Instruction Finetuning"), the ``neftune_noise_alpha`` of TRL and LLaMA-Factory.

    model.neftune_alpha=5    # sft train (or pretrain train) setting; 0 = off

In training mode the input embeddings get uniform noise in [-a, a], a = alpha / sqrt(L * d): L the
row's length in tokens (padded or packed, as TRL counts it), d the hidden size. Evaluation,
generation and the saved weights never see it (the hook checks the layer's training flag). The noise
comes from torch's generator, whose state every checkpoint saves, so a resumed run draws what an
uninterrupted one would.
"""
from __future__ import annotations

import math

import torch


def install_embedding_noise(module: torch.nn.Module, alpha: float):
    """Add the noise to ``module``'s input embeddings; returns the hook handle (None when alpha is 0)."""
    if alpha <= 0:
        return None

    def add_noise(layer: torch.nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not layer.training:
            return output
        bound = alpha / math.sqrt(output.shape[-2] * output.shape[-1])
        return output + torch.empty_like(output).uniform_(-bound, bound)

    return module.get_input_embeddings().register_forward_hook(add_noise)
