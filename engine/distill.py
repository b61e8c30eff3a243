"""Knowledge distillation from a teacher model (GKD, Agarwal et al. 2024; on-policy distillation as Qwen3 and
Thinking Machines train small models) as an objective of the one engine. The student (the model trained) learns
the teacher's whole next-token distribution at each answer position, not only the one token the data chose:

    loss = sum over answer tokens of D(teacher || student) at that position / answer tokens

with D engine/distill_loss.py's divergence (``beta``: 0 forward KL, 1 reverse KL, between the generalized JSD) of
the two distributions at ``temperature``. Whose answers: each micro batch is, with probability ``lmbda`` (GKD's
lambda; drawn per step and micro batch, from the seed, the same on every rank), the student's own answers to the
data's prompts, written at ``temperature`` (on-policy: the student learns where its own text goes wrong, the
mismatch between training and generation that training on fixed answers leaves), else the data's answers
(supervised KD). ``lmbda`` 1 and ``beta`` 1 is TRL's DistillationTrainer; ``lmbda`` 0 and ``beta`` 0 is classic
word-level KD.

The teacher is frozen, in eval mode, loaded in the run's dtype; under ZeRO-3 it is partitioned like the student
(DeepSpeed without an optimizer), so a teacher larger than one device fits beside the student. With
``model.fused_loss`` neither model's B x S x V logits exist: the teacher's forward stops at its last hidden
states, and the student's output layer computes the divergence from both models' hidden states, chunk by chunk.
It must share the student's vocabulary (sft/train_cli.py checks before loading). A resumed run loads the same
teacher again and draws the same choices and answers: nothing else is kept.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from .data import eval_batches, fetch
from .distill_loss import hidden_states_of, install_divergence_head, install_hidden_head, teacher_for, token_divergence
from .evaluate import MODEL_KEYS, eval_mode, summed_over_ranks
from .grpo_sampling import answer_lengths, training_rows
from .loss import IGNORE_INDEX, fused_head_of, output_linear, shift_labels
from .sampling import Sampler, place_seed

# own: on the student's answers; data: on the data's; rows: answers the student wrote; batches: micro batches
_SUMS = ("own_divergence", "own_tokens", "data_divergence", "data_tokens", "rows", "truncated", "own_batches",
         "batches")


def divergence_name(beta: float) -> str:
    """How the logs and the model card name the divergence of ``beta``."""
    return {0.0: "forward KL", 1.0: "reverse KL"}.get(float(beta), f"generalized JSD, beta {beta:g}")


def answer_prompts(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts of an SFT batch: each row up to where its last answer starts (multi-turn rows keep the
    earlier turns and answers), to be answered by the student."""
    prompts = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        labelled = (labels != IGNORE_INDEX) & mask.bool()
        starts = (labelled & ~torch.cat([labelled.new_zeros(1), labelled[:-1]])).nonzero()
        end = int(starts[-1]) if len(starts) else int(mask.sum())
        prompts.append(ids[:end])
    width = max(len(p) for p in prompts)
    out = {"input_ids": torch.full((len(prompts), width), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((len(prompts), width), dtype=torch.long)}
    for r, prompt in enumerate(prompts):
        out["input_ids"][r, width - len(prompt):] = prompt
        out["attention_mask"][r, width - len(prompt):] = 1
    return out


@dataclass
class DistillObjective:
    """``teacher``: engine/grpo_reference.FrozenCopy loading the teacher folder; ``sampler`` writes the student's
    answers (its temperature is ``temperature``)."""

    teacher: Any
    sampler: Sampler
    beta: float = 0.5
    lmbda: float = 0.5
    temperature: float = 1.0
    seed: int = 0
    chunk_tokens: int = 4096  # positions whose logits exist at a time (model.loss_chunk_tokens)
    _step: int = 0
    _micro: int = 0
    _window: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.beta <= 1 and 0 <= self.lmbda <= 1 and self.temperature > 0):
            raise ValueError(f"beta and lmbda in [0, 1], temperature > 0; got {self.beta}, {self.lmbda}, "
                             f"{self.temperature}")

    # ------------------------------------------------------------------ the loop's hooks
    def begin_step(self, step: int) -> None:
        self._step, self._micro = step, 0

    def prepare(self, engine, datasets, collate_fn, batch_size, output_dir, resumed, data_fingerprint, device,
                progress: bool = True) -> None:
        """Load the teacher beside the student (collective); with the fused head, both heads learn their parts."""
        self.teacher.build(engine)
        student = getattr(engine, "module", engine)
        if fused_head_of(student) is not None:
            install_divergence_head(student, self.chunk_tokens)
            install_hidden_head(self._teacher_module())
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"[zhllama] distillation: {divergence_name(self.beta)} to the teacher at temperature "
                  f"{self.temperature:g}, on the student's own answers in {self.lmbda:.0%} of micro batches (up to "
                  f"{self.sampler.max_new_tokens} tokens), on the data's answers otherwise", flush=True)

    def _teacher_module(self):
        return getattr(self.teacher.engine, "module", self.teacher.engine)

    def on_own_answers(self, step: int, micro: int) -> bool:
        """Whether micro batch ``micro`` of ``step`` trains on the student's answers (the same on every rank)."""
        return place_seed("distill", self.seed, "own", step, micro) / 2**63 < self.lmbda

    # ------------------------------------------------------------------ the engine's loss contract
    def loss(self, engine, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed divergence over the answer tokens, answer tokens)."""
        micro, self._micro = self._micro, self._micro + 1
        own = self.on_own_answers(self._step, micro)
        rows, written = batch, None
        if own:
            rank = dist.get_rank() if dist.is_initialized() else 0
            seed = place_seed("distill", self.seed, "answers", self._step, rank, micro)
            rows, written = self.student_answers(engine, batch, device, seed)
        total, tokens = self.divergence(engine, rows, device)
        sums = torch.zeros(len(_SUMS), dtype=torch.float64)
        sums[0 if own else 2], sums[1 if own else 3] = float(total.detach()), float(tokens)
        if written is not None:
            sums[4], sums[5] = float(written.numel()), float(written.sum())
        sums[6], sums[7] = float(own), 1.0
        self._window = sums if self._window is None else self._window + sums
        batch["input_ids"] = rows["input_ids"]  # the loop counts the tokens trained on from this
        return total, tokens

    def student_answers(self, engine, batch: dict[str, torch.Tensor], device,
                        seed: int, sample: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(rows of each prompt + the student's answer, labelled on the answer and its stop id; whether each answer
        was cut at max_new_tokens)."""
        prompts = answer_prompts(batch, self.sampler.pad_id)
        answers = self.sampler.generate(engine, prompts, device, sample=sample, seed=seed).cpu()
        lengths, truncated = answer_lengths(answers, self.sampler.stop_ids)
        kept = [ids[mask.bool()] for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"])]
        return training_rows(kept, answers, lengths, self.sampler.pad_id), truncated

    def divergence(self, engine, rows: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed divergence of the student from the teacher at the labelled positions of ``rows``, their count)."""
        inputs = {k: v.to(device) for k, v in rows.items() if k in MODEL_KEYS}
        targets = shift_labels(rows["labels"].to(device))  # label i is predicted at position i
        keep = targets != IGNORE_INDEX
        head = fused_head_of(getattr(engine, "module", engine))
        teacher = self.teacher.engine
        if head is None:  # both models' logits, whole
            with torch.no_grad():
                teacher_logits = teacher(**inputs, use_cache=False).logits[keep]
            logits = engine(**inputs, use_cache=False).logits[keep]
            total = token_divergence(logits, teacher_logits, self.beta, self.temperature).sum()
            return total, keep.sum()
        with torch.no_grad(), hidden_states_of(output_linear(self._teacher_module())):
            teacher_hidden = teacher(**inputs, use_cache=False).logits[keep]
        with self._teacher_head_weight() as weight, teacher_for(head, targets, teacher_hidden, weight, self.beta,
                                                               self.temperature):
            total = engine(**inputs, use_cache=False).logits
        return total, keep.sum()

    @contextmanager
    def _teacher_head_weight(self) -> Iterator[torch.Tensor]:
        """The teacher's output weight, whole (gathered from every rank under ZeRO-3: collective)."""
        weight = output_linear(self._teacher_module()).weight
        if not hasattr(weight, "ds_id"):
            yield weight
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight]):
            yield weight

    def train_metrics(self, device) -> dict[str, float]:
        """The divergence per answer token on the student's own answers and on the data's, the share of micro
        batches on the student's answers, and their length and truncation, over every rank since the last log line
        (collective)."""
        sums = self._window if self._window is not None else torch.zeros(len(_SUMS), dtype=torch.float64)
        self._window = None
        own, own_tokens, data, data_tokens, rows, truncated, own_batches, batches = (
            summed_over_ranks(sums, device).tolist())
        out = {"train/own_share": own_batches / max(batches, 1)}
        if own_tokens:
            out.update({"train/divergence_own": own / own_tokens, "train/answer_tokens": own_tokens / max(rows, 1),
                        "train/truncated": truncated / max(rows, 1)})
        if data_tokens:
            out["train/divergence_data"] = data / data_tokens
        return out

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def evaluate(self, engine, dataset: Any, collate_fn: Callable, batch_size: int, max_batches: int | None,
                 device) -> dict[str, float]:
        """The divergence per answer token on the held-out data's answers (``eval/loss``) and, where the student
        writes answers in training (``lmbda`` > 0), on its greedy answers to the same prompts."""
        rank, world = dist.get_rank(), dist.get_world_size()
        totals = torch.zeros(4, dtype=torch.float64)
        with eval_mode(engine):
            for indices in eval_batches(len(dataset), batch_size, rank, world, max_batches):
                batch = fetch(dataset, indices or [0], collate_fn)  # a rank without a share still runs (collective)
                parts = [batch] + ([self.student_answers(engine, batch, device, 0, sample=False)[0]]
                                   if self.lmbda else [])
                scored = [self.divergence(engine, rows, device) for rows in parts]
                if indices:
                    for i, (total, tokens) in enumerate(scored):
                        totals[2 * i] += float(total)
                        totals[2 * i + 1] += float(tokens)
        data, data_tokens, own, own_tokens = summed_over_ranks(totals, device).tolist()
        out = {"eval/loss": data / max(data_tokens, 1), "eval/tokens": data_tokens}
        if self.lmbda:
            out["eval/divergence_own"] = own / max(own_tokens, 1)
        return out
