"""Answers written for GRPO before they become training rows, and two of DAPO's (Yu et al. 2025) ways of making
them teach more:

* **Dynamic sampling** (``grpo.dynamic_sampling`` rounds): a group whose answers all scored the same has
  advantage 0 everywhere and teaches nothing, yet it still counts in the loss's normaliser. Such groups are
  replaced by groups written for more prompts, drawn at random from the training prompts (seeded by the step,
  rank, micro batch and round, so a resume draws the same), until none is left or the rounds run out; groups
  still flat then stay (advantage 0). Each round writes answers for as many prompts as the micro batch has, on
  every rank while any rank still needs some (generation is collective under several ranks).
* **Overlong reward shaping** (``grpo.overlong_buffer`` tokens): an answer longer than ``max_new_tokens`` minus
  the buffer loses reward linearly, up to ``overlong_penalty`` at ``max_new_tokens`` (a cut answer), so length
  is pushed back before answers are cut (verl's ``overlong_buffer``; the stop id counts as a token).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Written:
    """Groups of ``generations`` consecutive answers, one group per prompt."""

    prompts: list[torch.Tensor]  # per answer, its prompt's ids (no padding)
    answers: torch.Tensor  # answers x max_new_tokens, padded after the end
    lengths: torch.Tensor  # per answer, tokens up to and including its stop id
    truncated: torch.Tensor  # per answer: no stop id within max_new_tokens
    rewards: torch.Tensor  # per answer
    keys: torch.Tensor  # per group, the prompt's key

    def flat(self, generations: int) -> torch.Tensor:
        """Per group: every answer scored the same (the group's advantages are all 0)."""
        grouped = self.rewards.view(-1, generations)
        return (grouped == grouped[:, :1]).all(dim=1)

    def with_groups_of(self, targets: list[int], other: "Written", sources: list[int], generations: int) -> "Written":
        """This, with group ``targets[i]`` replaced by ``other``'s group ``sources[i]``."""
        def rows(group: int) -> range:
            return range(group * generations, (group + 1) * generations)

        pick = [(self, r) for r in range(len(self.prompts))]
        for target, source in zip(targets, sources):
            for t, s in zip(rows(target), rows(source)):
                pick[t] = (other, s)
        keys = self.keys.clone()
        keys[targets] = other.keys[sources]
        return Written(prompts=[w.prompts[r] for w, r in pick],
                       answers=torch.stack([w.answers[r] for w, r in pick]),
                       lengths=torch.stack([w.lengths[r] for w, r in pick]),
                       truncated=torch.stack([w.truncated[r] for w, r in pick]),
                       rewards=torch.stack([w.rewards[r] for w, r in pick]), keys=keys)


def refill_flat(written: Written, extra: Written, generations: int) -> tuple[Written, int]:
    """(``written`` with its flat groups replaced, in order, by ``extra``'s informative ones; how many were)."""
    targets = written.flat(generations).nonzero()[:, 0].tolist()
    sources = (~extra.flat(generations)).nonzero()[:, 0].tolist()
    count = min(len(targets), len(sources))
    if not count:
        return written, 0
    return written.with_groups_of(targets[:count], extra, sources[:count], generations), count


def draw_prompts(num_prompts: int, count: int, seed: int) -> list[int]:
    """``count`` indices of training prompts, drawn with replacement by a generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(num_prompts, (count,), generator=generator).tolist()


def overlong_shaping(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """Per answer, 0 up to ``max_new_tokens - buffer`` tokens, then falling linearly to ``-penalty`` at
    ``max_new_tokens``."""
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    excess = (lengths.float() - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * excess / buffer
