"""Answers written for GRPO and the rows trained on (``Rollout``: seeded by where they are in the run, cut at the
first stop id, each with its group advantage), and two of DAPO's (Yu et al. 2025) ways of making them teach more:

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
from typing import Any

import torch

from .loss import IGNORE_INDEX
from .sampling import place_seed


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


@dataclass
class Rollout:
    """One micro batch's answers: the rows to train on and what they scored."""

    batch: dict[str, torch.Tensor]  # input_ids / attention_mask / labels, right-padded: prompt + answer
    rewards: torch.Tensor  # (prompts x generations,)
    advantages: torch.Tensor
    answer_tokens: torch.Tensor  # per row, the stop id included
    truncated: torch.Tensor  # per row: no stop id within max_new_tokens
    prompt_keys: torch.Tensor | None = None  # the micro batch's prompts (a later pass checks it has the same ones)
    old_logps: torch.Tensor | None = None  # per answer token, the policy's when it wrote them (iterations > 1)
    ref_logps: torch.Tensor | None = None  # per answer token, the reference's (beta > 0; it never moves)
    groups_written: int = 0  # groups of answers written for it (more than its groups with dynamic sampling)

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Rollout":
        return cls(**state)


def rollout_seed(seed: int, step: int, rank: int, micro: int, round_: int = 0) -> int:
    """The sampling seed of one micro batch's answers (``round_`` > 0: its dynamic sampling's later rounds): a
    function of where it is in the run only."""
    return place_seed("grpo", seed, step, rank, micro, *([round_] if round_ else []))


def group_advantages(rewards: torch.Tensor, generations: int, scale: bool) -> torch.Tensor:
    """Each reward minus its group's mean (divided by the group's std when ``scale``); groups are
    consecutive runs of ``generations`` answers to one prompt. A group whose rewards are all equal gives 0."""
    grouped = rewards.double().view(-1, generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return centred.reshape(-1).float()


def answer_lengths(answers: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens of each answer up to and including its first stop id, whether it had none)."""
    is_stop = torch.isin(answers, torch.tensor(stop_ids, dtype=answers.dtype, device=answers.device))
    has_stop = is_stop.any(dim=1)
    first = torch.where(has_stop, is_stop.int().argmax(dim=1) + 1, torch.full_like(has_stop, answers.shape[1],
                                                                                      dtype=torch.long))
    return first.long(), ~has_stop


def training_rows(prompts: list[torch.Tensor], answers: torch.Tensor, lengths: torch.Tensor,
                  pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows of prompt + answer (natural positions, as in SFT), labels on the answer only."""
    rows = [(prompt, answer[:n]) for prompt, answer, n in zip(prompts, answers, lengths.tolist())]
    width = max(len(p) + len(a) for p, a in rows)
    batch = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
             "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)}
    for r, (prompt, answer) in enumerate(rows):
        p, a = len(prompt), len(answer)
        batch["input_ids"][r, :p + a] = torch.cat([prompt.cpu(), answer.cpu()])
        batch["attention_mask"][r, :p + a] = 1
        batch["labels"][r, p:p + a] = answer.cpu()
    return batch
