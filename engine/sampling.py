"""Text a training run writes with the model it trains (GRPO's answers, on-policy distillation's): sampled in eval
mode (no dropout), from exactly the distribution the loss assumes, with a seeded generator that leaves the training
RNG stream untouched, under ZeRO-3 with the weights as engine/zero3_generation.py holds them.

Every setting that shapes the distribution is given to ``generate``: a model's own generation_config.json (a chat
model's temperature, repetition_penalty, ...) only fills settings left unset, and would make the answers come from
another distribution than the one the loss assumes.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .evaluate import eval_mode
from .zero3_generation import weights_for_generation


def place_seed(*where: int | str) -> int:
    """A 63-bit seed that depends only on where in the run it is used (``where``: the objective's name, the run's
    seed, step, rank, micro batch, ...): a resumed run draws the very numbers the uninterrupted run drew."""
    key = "/".join(str(part) for part in where)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % 2**63


@contextmanager
def generation_attention(module) -> Iterator[None]:
    """sdpa while generating when training runs flex_attention: generation has no packed documents to keep
    apart, and flex's one-token decoding steps are a compile per shape (on CPU, a compile error in torch 2.13)."""
    model = module.get_base_model() if hasattr(module, "get_base_model") else module
    trained_with = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if trained_with != "flex_attention":
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(trained_with)


@dataclass
class Sampler:
    """How answers are written: up to ``max_new_tokens``, ending at any of ``stop_ids``, at ``temperature`` and
    ``top_p``; ``gather``: under ZeRO-3 the whole model is gathered once per call."""

    stop_ids: list[int]
    pad_id: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    gather: bool = True

    def generate(self, engine, batch: dict[str, torch.Tensor], device, sample: bool, seed: int) -> torch.Tensor:
        """New tokens (rows x max_new_tokens, padded after the end) after each left-padded prompt row of ``batch``
        (``input_ids``, ``attention_mask``); greedy unless ``sample``."""
        from transformers import GenerationConfig

        module = getattr(engine, "module", engine)
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, min_new_tokens=0, do_sample=sample,
                                  eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True,
                                  temperature=self.temperature, top_p=self.top_p, top_k=0, min_p=0.0, typical_p=1.0,
                                  repetition_penalty=1.0, no_repeat_ngram_size=0)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        devices = [device] if device.type == "cuda" else []
        rng = torch.random.fork_rng(devices=devices)
        weights = weights_for_generation(engine, self.gather)
        with torch.no_grad(), eval_mode(engine), generation_attention(module), rng, weights as synced:
            torch.manual_seed(seed)
            out = module.generate(input_ids=ids, attention_mask=mask, generation_config=config, synced_gpus=synced)
        answers = out[:, ids.shape[1]:]
        if answers.shape[1] < self.max_new_tokens:  # every row stopped early: pad to the fixed width
            fill = answers.new_full((answers.shape[0], self.max_new_tokens - answers.shape[1]), self.pad_id)
            answers = torch.cat([answers, fill], dim=1)
        return answers
