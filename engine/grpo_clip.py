"""GRPO's policy term with PPO's clipped importance ratio, for a batch of answers trained on more than once
(``grpo.iterations`` > 1, TRL's ``num_iterations``; DeepSeekMath's mu).

The answers were written by the policy as it was when they were sampled (pi_old); after an optimizer step the
policy differs, and each answer token's term is weighted by the ratio r = pi / pi_old, clipped so that one batch
of answers cannot move the policy far:

    term = -min(r * A, clip(r, 1 - epsilon, 1 + epsilon_high) * A)

``epsilon_high`` > ``epsilon`` is DAPO's clip-higher (0.2 / 0.28): a rare token with a positive advantage may
grow further. ``delta`` caps r itself in the first branch (INTELLECT-2's two-sided clip: a negative advantage
with a large ratio no longer pushes without bound). With ``importance: sequence`` the ratio is the answer's
(GSPO, Zheng et al. 2025: exp of the mean per-token log-ratio over the answer), so a whole answer is clipped or
not; GSPO clips far tighter (epsilon 3e-4, epsilon_high 4e-4).

At the first pass over the answers pi_old is the policy itself (the log-probabilities of the same forward,
detached): r is 1, nothing is clipped, and the gradient is -A grad(log pi), GRPO's with one pass.
This is TRL's ``_compute_loss`` for its clipped losses; benchmarks/grpo_crosscheck.py compares the two.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import GRPO_IMPORTANCE


@dataclass(frozen=True)
class Clip:
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: epsilon (symmetric, PPO's)
    delta: float | None = None  # None: no cap on the unclipped ratio
    importance: str = "token"  # the ratio per token (GRPO, PPO) or per answer (GSPO)

    def __post_init__(self) -> None:
        if self.importance not in GRPO_IMPORTANCE:
            raise ValueError(f"importance: expected one of {GRPO_IMPORTANCE}, got {self.importance!r}")

    @property
    def high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def importance_ratios(logps: torch.Tensor, old_logps: torch.Tensor, row: torch.Tensor, rows: int,
                      importance: str) -> torch.Tensor:
    """pi / pi_old per answer token (flat, as ``labelled_token_logps`` gives them; ``row`` names each token's
    answer): the token's own, or its answer's geometric mean (``sequence``)."""
    log_ratio = logps - old_logps
    if importance == "sequence":
        tokens = torch.zeros(rows, dtype=log_ratio.dtype, device=log_ratio.device).index_add(
            0, row, torch.ones_like(log_ratio))
        per_answer = torch.zeros(rows, dtype=log_ratio.dtype, device=log_ratio.device).index_add(0, row, log_ratio)
        log_ratio = (per_answer / tokens.clamp(min=1))[row]
    return torch.exp(log_ratio)


def clipped_policy_term(ratio: torch.Tensor, advantage: torch.Tensor,
                        clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss, whether the clip took that token's gradient away). ``advantage`` is per token."""
    low, high = 1 - clip.epsilon, 1 + clip.high
    clamped = ratio.clamp(low, high)
    capped = ratio.clamp(max=clip.delta) if clip.delta is not None else ratio
    term = -torch.min(capped * advantage, clamped * advantage)
    clipped = ((ratio < low) & (advantage < 0)) | ((ratio > high) & (advantage > 0))
    return term, clipped.detach()


def high_entropy_tokens(entropy: torch.Tensor, counted: torch.Tensor, top: float) -> torch.Tensor:
    """Which answer tokens train when only the ``top`` share of highest-entropy ones do ("Beyond the 80/20 rule",
    Wang et al. 2025; TRL's ``top_entropy_quantile``): those at or above the (1 - top) quantile of the entropies
    of every rank's counted tokens of this micro batch. ``counted``: the tokens in the loss (bool)."""
    mine = entropy[counted].float().cpu()
    if dist.is_initialized() and dist.get_world_size() > 1:  # the threshold is the micro batch's over all ranks
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        mine = torch.cat(parts)
    if mine.numel() == 0:
        return torch.zeros_like(counted)
    threshold = torch.quantile(mine, 1 - top)
    return (entropy >= threshold.to(entropy.device)) & counted
