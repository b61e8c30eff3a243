"""Group Relative Policy Optimization (GRPO, Shao et al. 2024, DeepSeekMath) with verifiable rewards, as an
objective of the one engine: the model writes ``generations`` answers to each prompt, a reward function
scores them, and each answer's advantage is its reward against its group's:

    A_i = (r_i - mean(r of the group)) / (std(r of the group) + 1e-4)     (scale_rewards; else without the std,
                                                                           as Dr. GRPO, Liu et al. 2025)
    loss = - sum_i A_i * sum_t log pi(o_i,t | prompt, o_i,<t) / N

with N the answer tokens of the micro batch (``loss: token``, DAPO's token-level mean, Yu et al. 2025), the
answers, each answer's log-probability taken as its per-token mean (``loss: sequence``, GRPO's paper), or
answers x ``max_new_tokens`` (``loss: dr_grpo``, Dr. GRPO: no length normalisation at all).
pi is the distribution the answers were sampled from, softmax(logits / temperature), as in TRL and verl.
With ``iterations`` = 1, one optimizer step per batch of answers: the policy that wrote them is the one
trained, so the PPO ratio is 1 and its clip never acts; the gradient is what is written above (TRL's
GRPOTrainer with ``num_iterations=1``). With ``iterations`` = mu > 1, the answers of step g are trained on
again at steps g+1 .. g+mu-1 (the data order gives those steps the same prompts: engine/data.py), each token
weighted by its clipped ratio to the policy that wrote them (engine/grpo_clip.py); the answers, their
log-probabilities when written and the reference's are kept until then, in checkpoints too, so a resume
between two passes trains on the very same.

With ``beta`` > 0 each answer token also pays beta x KL(pi || ref) to the model the run started from
(engine/grpo_reference.py: GRPO's paper, 0.04; TRL's ``beta``), summed and normalised with the policy term,
its gradient that of the KL itself (``kl_correction``, TRL's ``use_bias_correction_kl``: the term times the
ratio) or, without, the GRPO paper's k3 estimate's own; with ``beta = 0`` (DAPO's and Dr. GRPO's choice,
TRL's default) there is no reference.

Answers are sampled in eval mode (no dropout) with a generator seeded by (seed, step, rank, micro batch),
inside ``torch.random.fork_rng``: a resumed run writes the very answers the uninterrupted run wrote, and
the training RNG stream is untouched. Under ZeRO-3 the whole model is gathered once per generate call, or
every rank runs generation forwards until all ranks' answers are done (``synced_gpus``: the per-token gathers
are collective; engine/zero3_generation.py). Answers end at a stop id (trained,
as SFT trains EOS) or at ``max_new_tokens`` (truncated; ``mask_truncated`` leaves those out of the loss,
DAPO's overlong filtering).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from zhllama.errors import UserError

from .config import GRPO_LOSSES
from .data import eval_batches, fetch
from .evaluate import summed_over_ranks
from .grpo_clip import Clip, clipped_policy_term, high_entropy_tokens, importance_ratios
from .grpo_reference import token_kl
from .grpo_sampling import (Rollout, Written, answer_lengths, draw_prompts, group_advantages, overlong_shaping,
                            refill_flat, rollout_seed, training_rows)
from .preference import labelled_token_stats
from .sampling import Sampler
from .zero3_generation import zero_stage

# loss_tokens: the answer tokens in the loss (those of answers cut at max_new_tokens are not, with mask_truncated)
_SUMS = ("answers", "reward", "groups", "flat_groups", "answer_tokens", "truncated", "kl", "clipped", "loss_tokens",
         "groups_written", "entropy")


@dataclass
class GRPOObjective:
    """``reward(prompt_keys, answer_texts) -> rewards``; ``decode(ids) -> text`` (stop id excluded)."""

    reward: Callable[[list[int], list[str]], list[float]]
    decode: Callable[[list[int]], str]
    stop_ids: list[int]
    pad_id: int
    generations: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    scale_rewards: bool = True
    loss_kind: str = "token"
    mask_truncated: bool = False
    seed: int = 0
    beta: float = 0.0  # weight of the per-token KL to the starting model
    kl_correction: bool = True  # the KL term times the ratio pi / pi.detach() (1): its gradient is KL's own
    reference: Any = None  # engine/grpo_reference.py: AdapterOff or FrozenCopy (needed when beta > 0)
    iterations: int = 1  # optimizer steps on each batch of answers (TRL's num_iterations)
    dynamic_sampling: int = 0  # rounds of more prompts for groups that all scored the same (engine/grpo_sampling.py)
    overlong_buffer: int = 0  # tokens before max_new_tokens where the reward starts to fall (DAPO); 0: off
    overlong_penalty: float = 1.0  # the reward lost at max_new_tokens
    gather_for_generation: bool = True  # ZeRO-3: the whole model on each rank while writing (engine/zero3_generation.py)
    top_entropy_quantile: float = 1.0  # < 1: only that share of answer tokens, the highest-entropy ones, train
    ref_sync_steps: int = 0  # > 0: every this many steps the reference moves to the policy (FrozenCopy.sync_from)
    ref_sync_alpha: float = 0.6  # how far: ref <- alpha x policy + (1 - alpha) x ref (1: a reset)
    clip: Clip = field(default_factory=Clip)  # the ratio's clip when iterations > 1 (engine/grpo_clip.py)
    _step: int = 0
    _micro: int = 0
    _window: torch.Tensor | None = field(default=None, repr=False)
    _kept: dict[int, Rollout] = field(default_factory=dict, repr=False)  # this group's answers, by micro batch
    _prompts: Any = field(default=None, repr=False)  # (training prompts, collate) to draw more from
    _engine: Any = field(default=None, repr=False)  # the policy, which the reference moves to

    def __post_init__(self) -> None:
        if self.loss_kind not in GRPO_LOSSES:
            raise ValueError(f"loss_kind: expected one of {GRPO_LOSSES}, got {self.loss_kind!r}")
        if self.beta and self.reference is None:
            raise ValueError("beta > 0 needs a reference (engine/grpo_reference.py)")
        if self.iterations < 1:
            raise ValueError(f"iterations: must be >= 1, got {self.iterations}")
        if self.ref_sync_steps and not hasattr(self.reference, "sync_from"):
            raise ValueError("ref_sync_steps needs a reference that can move (a FrozenCopy: beta > 0, mode full)")

    # ------------------------------------------------------------------ the loop's hooks
    def begin_step(self, step: int) -> None:
        """Called before each optimizer step's micro batches: the seed of each rollout follows from it, and
        whether answers are written (a group's first step) or the group's kept ones trained on again."""
        self._step, self._micro = step, 0
        if step % self.iterations == 0:
            self._kept = {}
        if self.ref_sync_steps and step and step % self.ref_sync_steps == 0:  # TRL syncs after such a step too
            self.reference.sync_from(self._engine, self.ref_sync_alpha)

    def checkpoint_state(self, next_step: int) -> dict[str, Any] | None:
        """What a run resumed at ``next_step`` needs besides the weights: the answers of the group that step
        is in, with their log-probabilities (none at a group's first step: its answers are written anew), and the
        reference's weights once it has moved (collective then). None when there is nothing to keep."""
        state: dict[str, Any] = {}
        if next_step % self.iterations:
            state.update(group_start=next_step - next_step % self.iterations,
                         rollouts={micro: kept.state() for micro, kept in self._kept.items()})
        if self._reference_moved(next_step):
            state["reference"] = self.reference.state()  # whole on rank 0, {} on the others
        return state or None

    def _reference_moved(self, next_step: int) -> bool:
        """Whether the reference moved before ``next_step`` (it moves as steps N, 2N, ... begin)."""
        return bool(self.ref_sync_steps) and next_step > self.ref_sync_steps

    def restore(self, state: dict[str, Any] | None, step: int, where: str) -> None:
        """Take back the answers a run resumed at ``step`` trains on again, and the reference as it had moved
        (``checkpoint_state``'s)."""
        start = step - step % self.iterations
        if step % self.iterations and (state is None or state.get("group_start") != start):
            raise UserError(f"{where}: step {step} trains again on the answers written at step {start} "
                            f"(grpo.iterations={self.iterations}), and the checkpoint does not hold them; resume "
                            f"from a checkpoint at a multiple of {self.iterations} steps (checkpoint.resume=PATH)")
        if self._reference_moved(step) and (state is None or "reference" not in state):
            raise UserError(f"{where}: the reference had moved to the policy before step {step} "
                            f"(grpo.ref_sync_steps={self.ref_sync_steps}), and the checkpoint does not hold it")
        if step % self.iterations:
            self._kept = {int(micro): Rollout.from_state(kept) for micro, kept in state["rollouts"].items()}
        if self._reference_moved(step):
            self.reference.load_state(state["reference"])  # collective: every rank has the key

    def prepare(self, engine, datasets, collate_fn, batch_size, output_dir, resumed, data_fingerprint, device,
                progress: bool = True) -> None:
        """The reference model where ``beta`` > 0 (loaded again on a resume: it is the starting model); a hint
        where generation will be slow."""
        self._prompts, self._engine = (datasets["train"], collate_fn), engine
        if self.beta:
            self.reference.build(engine)
            if dist.get_rank() == 0:
                print(f"[zhllama] GRPO: KL penalty {self.beta:g} per answer token against {self.reference.describe}",
                      flush=True)
        if zero_stage(engine) == 3 and dist.get_rank() == 0:
            print("[zhllama] GRPO under ZeRO-3: " + (
                "the whole model is gathered on each rank while answers are written (grpo.gather_for_generation="
                "false where it does not fit one device beside the training state)" if self.gather_for_generation
                else f"each of the up to {self.max_new_tokens} tokens of an answer gathers every layer's weights from "
                     "all ranks (grpo.gather_for_generation=true gathers them once, where the model fits one "
                     "device)"), flush=True)

    # ------------------------------------------------------------------ rollouts
    def _generate(self, engine, batch: dict[str, torch.Tensor], device, sample: bool, seed: int) -> torch.Tensor:
        """New tokens (rows x max_new_tokens, padded after the end) for each prompt row of ``batch``."""
        sampler = Sampler(self.stop_ids, self.pad_id, self.max_new_tokens, self.temperature, self.top_p,
                          self.gather_for_generation)
        return sampler.generate(engine, batch, device, sample, seed)

    def _read(self, answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(tokens of each answer with its stop id, whether it was cut, its text without the stop id)."""
        lengths, truncated = answer_lengths(answers, self.stop_ids)
        texts = [self.decode(row[:n - (0 if cut else 1)].tolist())
                 for row, n, cut in zip(answers, lengths.tolist(), truncated.tolist())]
        return lengths, truncated, texts

    def _write(self, engine, batch: dict[str, torch.Tensor], device, seed: int) -> Written:
        """``generations`` sampled answers per prompt of ``batch``, scored (and shaped by length)."""
        group = {k: v.repeat_interleave(self.generations, dim=0) for k, v in batch.items()}
        answers = self._generate(engine, group, device, sample=True, seed=seed).cpu()
        lengths, truncated, texts = self._read(answers)
        rewards = torch.tensor(self.reward(group["prompt_keys"].tolist(), texts), dtype=torch.float32)
        rewards += overlong_shaping(lengths, self.max_new_tokens, self.overlong_buffer, self.overlong_penalty)
        prompts = [ids[mask.bool()] for ids, mask in zip(group["input_ids"].cpu(), group["attention_mask"].cpu())]
        return Written(prompts, answers, lengths, truncated, rewards, batch["prompt_keys"].clone())

    def rollout(self, engine, batch: dict[str, torch.Tensor], device) -> Rollout:
        """Sample ``generations`` answers per prompt, score them (with ``dynamic_sampling``, replace groups that
        all scored the same) and give each its group advantage."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        micro, self._micro = self._micro, self._micro + 1
        written = self._write(engine, batch, device, rollout_seed(self.seed, self._step, rank, micro))
        groups_written = len(written.keys)
        for round_ in range(1, self.dynamic_sampling + 1):
            if not _any_rank(bool(written.flat(self.generations).any()), device):
                break
            more_seed = rollout_seed(self.seed, self._step, rank, micro, round_)
            train, collate = self._prompts
            more = fetch(train, draw_prompts(len(train), len(written.keys), more_seed), collate)
            written, _ = refill_flat(written, self._write(engine, more, device, more_seed), self.generations)
            groups_written += len(written.keys)
        advantages = group_advantages(written.rewards, self.generations, self.scale_rewards)
        rows = training_rows(written.prompts, written.answers, written.lengths, self.pad_id)
        return Rollout(rows, written.rewards, advantages, written.lengths, written.truncated,
                       batch["prompt_keys"].clone(), groups_written=groups_written)

    def _rollout_of(self, engine, batch: dict[str, torch.Tensor], device) -> Rollout:
        """A group's first step writes answers; its later steps take the ones kept for this micro batch."""
        if self._step % self.iterations == 0:
            return self.rollout(engine, batch, device)
        kept = self._kept.get(self._micro)
        start = self._step - self._step % self.iterations
        if kept is None or not torch.equal(kept.prompt_keys, batch["prompt_keys"]):
            raise RuntimeError(f"GRPO: step {self._step}, micro batch {self._micro}: the answers written at step "
                               f"{start} are {'not kept' if kept is None else 'to other prompts'}")
        self._micro += 1
        return kept

    # ------------------------------------------------------------------ the engine's loss contract
    def loss(self, engine, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, its normaliser): answer tokens (``token``), answers (``sequence``) or answers x
        max_new_tokens (``dr_grpo``). Per answer token, -A times its clipped ratio to the policy that wrote the answer
        (1 at the first pass) (+ beta x KL to the reference); a masked answer's tokens add nothing."""
        micro = self._micro
        rollout = self._rollout_of(engine, batch, device)
        logps, keep, entropy = labelled_token_stats(engine, rollout.batch, device, self.temperature, entropy=True)
        row = keep.nonzero()[:, 0]  # the answer each token belongs to
        tokens = keep.sum(dim=1)
        first_pass = rollout.old_logps is None  # the policy is still the one that wrote the answers
        old = logps.detach() if first_pass else rollout.old_logps.to(logps.device)
        ratio = importance_ratios(logps, old, row, keep.shape[0], self.clip.importance)
        per_token, clipped = clipped_policy_term(ratio, rollout.advantages.to(logps.device)[row], self.clip)
        weight = torch.ones_like(logps)
        if self.mask_truncated:  # DAPO: a cut-off answer neither counts nor is counted (its reward still shaped
            cut = rollout.truncated.to(logps.device)  # its group's mean, as in TRL)
            weight = (~cut)[row].to(logps.dtype)
            tokens = torch.where(cut, torch.zeros_like(tokens), tokens)
        if self.top_entropy_quantile < 1:  # the forking tokens train; the others count in the normaliser (TRL)
            per_token = per_token * high_entropy_tokens(entropy, weight > 0, self.top_entropy_quantile)
        kl = reference = None
        if self.beta:
            reference = rollout.ref_logps
            reference = (self.reference(engine, rollout.batch, device, self.temperature) if reference is None
                         else reference.to(logps.device))
            kl = token_kl(logps, reference)
            # k3's own gradient misses the samples' dependence on pi; times the ratio (value 1 at the first pass) it
            # gains k3 x grad(log pi), and the sum is the gradient of KL(pi || ref) (DeepSeek-V3.2; TRL's default)
            term = kl * ratio if self.kl_correction else kl
            per_token = per_token + self.beta * term
        if first_pass and self.iterations > 1:  # trained on again in the group's later steps
            rollout.old_logps = logps.detach().cpu()
            rollout.ref_logps = None if reference is None else reference.detach().cpu()
            self._kept[micro] = rollout
        per_token = per_token * weight
        if self.loss_kind == "token":
            loss_sum, count = per_token.sum(), tokens.sum()
        elif self.loss_kind == "dr_grpo":  # a fixed normaliser: a long answer's tokens weigh what a short one's do
            loss_sum, count = per_token.sum(), torch.tensor(keep.shape[0] * self.max_new_tokens, device=tokens.device)
        else:  # each answer's per-token mean; a masked answer still counts, as in TRL
            per_answer = torch.zeros(keep.shape[0], dtype=per_token.dtype, device=per_token.device)
            loss_sum = (per_answer.index_add(0, row, per_token) / tokens.clamp(min=1)).sum()
            count = torch.tensor(keep.shape[0], device=tokens.device)
        kl_sum = 0.0 if kl is None else float((kl.detach() * weight).sum())
        sums = self._sums(rollout, kl_sum, float((clipped * weight).sum()), float(weight.sum()),
                          float((entropy * weight).sum()))
        self._window = sums if self._window is None else self._window + sums
        batch["input_ids"] = rollout.batch["input_ids"]  # the loop counts the tokens trained on from this
        return loss_sum, count

    def _sums(self, rollout: Rollout, kl: float, clipped: float, loss_tokens: float, entropy: float) -> torch.Tensor:
        grouped = rollout.rewards.view(-1, self.generations)
        flat = (grouped == grouped[:, :1]).all(dim=1)
        return torch.tensor([float(rollout.rewards.numel()), float(rollout.rewards.sum()), float(grouped.shape[0]),
                             float(flat.sum()), float(rollout.answer_tokens.sum()), float(rollout.truncated.sum()),
                             kl, clipped, loss_tokens, float(rollout.groups_written or grouped.shape[0]), entropy],
                            dtype=torch.float64)

    def train_metrics(self, device) -> dict[str, float]:
        """Mean reward, groups with no signal, answer length and truncation over every rank's answers trained on
        since the last log line (with iterations > 1 an answer counts at each step that trains on it), the policy's
        entropy per answer token, the KL to the reference, and the share of answer tokens whose gradient the clip
        took away (collective: every rank calls it at each log line)."""
        sums = self._window if self._window is not None else torch.zeros(len(_SUMS), dtype=torch.float64)
        self._window = None
        answers, reward, groups, flat, tokens, truncated, kl, clipped, loss_tokens, written, entropy = (
            summed_over_ranks(sums, device).tolist())
        out = {"train/reward": reward / max(answers, 1), "train/flat_groups": flat / max(groups, 1),
               "train/answer_tokens": tokens / max(answers, 1), "train/truncated": truncated / max(answers, 1),
               "train/entropy": entropy / max(loss_tokens, 1)}  # nats per answer token; falling to 0: collapse
        if self.beta:  # the mean per-token KL to the reference of the answers trained on
            out["train/kl"] = kl / max(loss_tokens, 1)
        if self.iterations > 1:  # 0 at a group's first step (ratio 1); how far later steps pushed against the clip
            out["train/clipped"] = clipped / max(loss_tokens, 1)
        if self.dynamic_sampling:  # what it cost: groups written per group trained on (1: none was flat)
            out["train/groups_written"] = written / max(groups, 1)
        return out

    # ------------------------------------------------------------------ validation
    def evaluate(self, engine, dataset: Any, collate_fn: Callable, batch_size: int, max_batches: int | None,
                 device) -> dict[str, float]:
        """Greedy answers to the held-out prompts: mean reward, answer length, truncated share."""
        rank, world = dist.get_rank(), dist.get_world_size()
        totals = torch.zeros(4, dtype=torch.float64)
        for indices in eval_batches(len(dataset), batch_size, rank, world, max_batches):
            batch = fetch(dataset, indices or [0], collate_fn)  # a rank without a share still generates
            answers = self._generate(engine, batch, device, sample=False, seed=0).cpu()
            if not indices:
                continue
            lengths, truncated, texts = self._read(answers)
            rewards = self.reward(batch["prompt_keys"].tolist(), texts)
            totals += torch.tensor([len(texts), sum(rewards), float(lengths.sum()), float(truncated.sum())],
                                   dtype=torch.float64)
        prompts, reward, tokens, truncated = summed_over_ranks(totals, device).tolist()
        prompts_seen = max(prompts, 1.0)
        return {"eval/reward": reward / prompts_seen, "eval/answer_tokens": tokens / prompts_seen,
                "eval/truncated": truncated / prompts_seen, "eval/prompts": prompts}


def _any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` holds on any rank (collective where ranks run: each then writes the same rounds)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    return bool(summed_over_ranks(torch.tensor([float(flag)], dtype=torch.float64), device)[0] > 0)
