"""Direct Preference Optimization (DPO, Rafailov et al. 2023) as an objective of the one engine.

A batch holds pairs: row 2i is pair i's chosen answer, row 2i+1 its rejected one, both after the same
prompt, labelled on the final answer only (and its EOS). With the policy's summed log-probability
``pi`` of each answer and the reference model's ``ref``,

    margin = beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))
    loss   = -(1 - eps) * log sigmoid(margin) - eps * log sigmoid(-margin)     (eps: label_smoothing, cDPO)
           + nll_weight * (-pi_chosen / chosen tokens)                          (RPO's NLL on the chosen answer)

``kind="ipo"``: the same margin of per-token mean log-probabilities, loss (margin/beta - 1/(2 beta))^2.
``kind="simpo"``: no reference; margin = beta * (mean pi_chosen - mean pi_rejected), loss as above on
margin - simpo_gamma. ``kind="orpo"``: no reference; the chosen answer's per-token NLL minus
beta * log sigmoid(log odds(chosen) - log odds(rejected)), odds p / (1 - p) of the per-token mean
probability p = exp(mean pi). The implicit rewards (beta times the compared scores) are logged for every kind.

The reference (sigmoid, ipo) is the model the run starts from. Its log-probabilities are computed once, before step 1,
in one evaluation pass over the train and eval pairs (eval mode: no dropout, no NEFTune noise), and
kept in ``output_dir/dpo_reference.json``. So no second model sits in GPU memory, LoRA and full training
are treated alike, and a resumed run uses the very numbers the interrupted one used (a resume without
that file is refused: after step 1 the starting model no longer exists in the run).

Memory: with ``model.fused_loss`` (the default) the output layer computes each answer position's
log-probability from the hidden states ``loss_chunk_tokens`` positions at a time (engine/loss.py
``linear_token_logps``; backward recomputes a chunk's logits), so the B x S x V logits never exist;
without it, the model's logits plus an fp32 copy of the answer positions' rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from zhllama.errors import UserError
from zhllama.files import write_json_atomic

from .config import PREFERENCE_LOSSES
from .data import eval_batches, fetch
from .evaluate import MODEL_KEYS, eval_mode, summed_over_ranks
from .loss import IGNORE_INDEX, fused_head_of, labels_for, shift_labels

REFERENCE_FILE = "dpo_reference.json"  # float64 as JSON numbers: read back bit for bit


def sequence_logps(engine, batch: dict[str, torch.Tensor], device,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's labelled tokens (fp32), labelled tokens per row), of the
    distribution softmax(logits / ``temperature``)."""
    token_logps, keep = labelled_token_logps(engine, batch, device, temperature)
    sums = torch.zeros(keep.shape[0], dtype=torch.float32, device=token_logps.device)
    return sums.index_add(0, keep.nonzero()[:, 0], token_logps), keep.sum(dim=1)


def labelled_token_logps(engine, batch: dict[str, torch.Tensor], device,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each labelled token (fp32), flat in row-major order; the rows x positions mask of
    where they are), of the distribution softmax(logits / ``temperature``)."""
    token_logps, keep, _ = labelled_token_stats(engine, batch, device, temperature)
    return token_logps, keep


def labelled_token_stats(engine, batch: dict[str, torch.Tensor], device, temperature: float = 1.0,
                         entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``labelled_token_logps``, and with ``entropy`` each labelled position's distribution's entropy (fp32,
    detached, in the same order; GRPO's watch on the policy's collapse), from the same forward."""
    inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_KEYS}
    targets = shift_labels(batch["labels"].to(device))  # label i is predicted at position i
    keep = targets != IGNORE_INDEX
    head = fused_head_of(getattr(engine, "module", engine))
    entropies: list | None = [] if entropy else None
    if head is not None:  # chunked: answer positions' log-probabilities straight from the hidden states
        with labels_for(head, targets, per_token=True, temperature=temperature, entropy=entropies):
            token_logps = engine(**inputs, use_cache=False).logits
    else:  # the model's logits; an fp32 copy only where an answer token is predicted
        logits = engine(**inputs, use_cache=False).logits
        scaled = logits[keep].float() / temperature
        log_probs = scaled.log_softmax(dim=-1)
        token_logps = log_probs.gather(1, targets[keep][:, None]).squeeze(1)
        if entropy:
            entropies.append(-(log_probs.detach().exp() * log_probs.detach()).sum(dim=-1))
    return token_logps, keep, (entropies[0] if entropy else None)


@dataclass
class PairStats:
    """Per pair: the DPO loss, the implicit rewards beta * (pi - ref) and the policy's log-probabilities."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    chosen_logp: torch.Tensor
    rejected_logp: torch.Tensor

    def sums(self) -> torch.Tensor:
        """pairs, pairs ranked right, margin, chosen and rejected log-probabilities: summed, detached."""
        margin = (self.chosen_reward - self.rejected_reward).detach()
        return torch.stack([torch.tensor(float(margin.numel()), device=margin.device), (margin > 0).sum().float(),
                            margin.sum(), self.chosen_logp.detach().sum(), self.rejected_logp.detach().sum()])


@dataclass
class DPOObjective:
    """``kind``: sigmoid (DPO), ipo (Azar et al. 2023: a squared loss on per-token mean log-ratios, which
    does not push a margin without bound), simpo (Meng et al. 2024: per-token mean log-probabilities
    against a margin ``simpo_gamma``, no reference model at all) or orpo (Hong et al. 2024: SFT on the
    chosen answer plus an odds-ratio penalty on the rejected one, no reference; ``beta`` is its lambda)."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    nll_weight: float = 0.0
    kind: str = "sigmoid"
    simpo_gamma: float = 0.5
    _window: torch.Tensor | None = field(default=None, repr=False)  # training pairs' sums since the last log line

    def __post_init__(self) -> None:
        if self.kind not in PREFERENCE_LOSSES:
            raise ValueError(f"kind: expected one of {PREFERENCE_LOSSES}, got {self.kind!r}")

    @property
    def needs_reference(self) -> bool:
        return self.kind not in ("simpo", "orpo")

    def pair_stats(self, engine, batch: dict[str, torch.Tensor], device) -> PairStats:
        if self.needs_reference and "reference_logps" not in batch:
            raise RuntimeError("a DPO batch needs reference_logps (DPOObjective.prepare sets them)")
        logps, tokens = sequence_logps(engine, batch, device)
        per_token = self.kind != "sigmoid"  # the others compare mean log-probabilities, as their papers do
        scores = logps / tokens.clamp(min=1) if per_token else logps
        if self.needs_reference:
            reference = batch["reference_logps"].to(device=logps.device, dtype=torch.float32).reshape(-1)
            scores = scores - (reference / tokens.clamp(min=1) if per_token else reference)
        chosen, rejected = self.beta * scores[0::2], self.beta * scores[1::2]
        margin, difference = chosen - rejected, scores[0::2] - scores[1::2]
        if self.kind == "ipo":
            loss = (difference - 1 / (2 * self.beta)) ** 2
        elif self.kind == "orpo":  # log(1 - p) as log(-expm1(log p)): exact where p is near 1
            log_odds = difference - (torch.log(-torch.expm1(scores[0::2])) - torch.log(-torch.expm1(scores[1::2])))
            loss = -scores[0::2] - self.beta * F.logsigmoid(log_odds)
        else:
            shifted = margin - self.simpo_gamma if self.kind == "simpo" else margin
            eps = self.label_smoothing
            loss = -(1 - eps) * F.logsigmoid(shifted) - (eps * F.logsigmoid(-shifted) if eps else 0.0)
        if self.nll_weight:
            loss = loss + self.nll_weight * (-logps[0::2] / tokens[0::2].clamp(min=1))
        return PairStats(loss, chosen, rejected, logps[0::2], logps[1::2])

    def loss(self, engine, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss over the batch's pairs, number of pairs): the engine's loss contract."""
        stats = self.pair_stats(engine, batch, device)
        sums = stats.sums()
        self._window = sums if self._window is None else self._window + sums  # no device sync per micro batch
        return stats.loss.sum(), torch.tensor(stats.loss.numel(), device=stats.loss.device)

    def train_metrics(self, device) -> dict[str, float]:
        """The log line's reward accuracy, margin and log-probabilities over every rank's pairs since the
        last one (collective: every rank calls it at each log line)."""
        sums = self._window if self._window is not None else torch.zeros(5)
        sums = sums.to(device if dist.get_backend() == "nccl" else "cpu", torch.float64)
        dist.all_reduce(sums)
        self._window = None
        pairs, correct, margin, chosen, rejected = sums.tolist()
        pairs = max(pairs, 1.0)
        return {"train/reward_accuracy": correct / pairs, "train/reward_margin": margin / pairs,
                "train/logp_chosen": chosen / pairs, "train/logp_rejected": rejected / pairs}

    # ------------------------------------------------------------------ the reference pass
    def prepare(self, engine, datasets: dict[str, Any], collate_fn: Callable, batch_size: int, output_dir: str | Path,
                resumed: bool, data_fingerprint: str | None, device, progress: bool = True) -> None:
        """Give every dataset its reference log-probabilities: computed now on a fresh run, read back on a
        resume. Datasets take them through ``set_reference(tensor of shape (len, 2))``."""
        if self.needs_reference:
            prepare_reference(engine, datasets, collate_fn, batch_size, Path(output_dir) / REFERENCE_FILE, resumed,
                              data_fingerprint, device, progress, "DPO", "pairs")

    # ------------------------------------------------------------------ validation
    def evaluate(self, engine, dataset: Any, collate_fn: Callable, batch_size: int, max_batches: int | None,
                 device) -> dict[str, float]:
        """Mean DPO loss, reward accuracy (chosen reward above rejected) and mean margin over the eval pairs."""
        totals = held_out_totals(engine, dataset, collate_fn, batch_size, max_batches, device, 6,
                                 lambda batch, real: self.pair_stats(engine, batch, device))
        loss, pairs, correct, margin, chosen, rejected = totals
        pairs = max(pairs, 1.0)
        return {"eval/loss": loss / pairs, "eval/reward_accuracy": correct / pairs, "eval/reward_margin": margin / pairs,
                "eval/logp_chosen": chosen / pairs, "eval/logp_rejected": rejected / pairs, "eval/pairs": pairs}


@torch.no_grad()
def held_out_totals(engine, dataset: Any, collate_fn: Callable, batch_size: int, max_batches: int | None, device,
                    width: int, stats_of: Callable) -> list[float]:
    """[summed loss, *stats.sums()] over every rank's share of ``dataset`` in eval mode, ``width`` numbers.
    ``stats_of(batch, real)`` scores a batch; ``real`` is False for the dummy batch a rank without a share
    still runs (ZeRO-3 gathers are collective), which adds nothing."""
    rank, world = dist.get_rank(), dist.get_world_size()
    totals = torch.zeros(width, dtype=torch.float64)
    with eval_mode(engine):
        for indices in eval_batches(len(dataset), batch_size, rank, world, max_batches):
            stats = stats_of(fetch(dataset, indices or [0], collate_fn), bool(indices))
            if indices:
                totals += torch.cat([stats.loss.sum()[None], stats.sums()]).double().cpu()
    return summed_over_ranks(totals, device).tolist()


@torch.no_grad()
def reference_logps(engine, dataset: Any, collate_fn: Callable, batch_size: int, device, desc: str = "reference",
                    progress: bool = True) -> torch.Tensor:
    """(len(dataset), 2) float64: chosen and rejected log-probabilities under the model as it is now.
    Every rank runs the same number of forwards (ZeRO-3 gathers are collective); the table is summed."""
    from tqdm.auto import tqdm

    rank, world = dist.get_rank(), dist.get_world_size()
    table = torch.zeros(len(dataset), 2, dtype=torch.float64)
    batches = list(eval_batches(len(dataset), batch_size, rank, world, None))
    with eval_mode(engine):
        for indices in tqdm(batches, desc=desc, unit="batch", disable=rank != 0 or not progress, dynamic_ncols=True):
            logps, _ = sequence_logps(engine, fetch(dataset, indices or [0], collate_fn), device)
            if indices:
                table[indices] = logps.double().cpu().view(-1, 2)
    return summed_over_ranks(table, device)


def prepare_reference(engine, datasets: dict[str, Any], collate_fn: Callable, batch_size: int, path: Path,
                      resumed: bool, data_fingerprint: str | None, device, progress: bool, what: str, items: str) -> None:
    """Each dataset's (len, 2) reference table (its two rows per item under the starting model): computed
    and written to ``path`` on a fresh run, read back on a resume, then given by ``set_reference``."""
    counts = " + ".join(f"{len(ds):,} {name}" for name, ds in datasets.items())
    if resumed:
        tables = _read_reference(path, data_fingerprint, datasets, what, items)
        _say(f"{what} reference: the starting model's log-probabilities of {counts} {items} read back from {path}")
    else:
        _say(f"{what} reference: scoring {counts} {items} with the starting model -> {path}")
        tables = {name: reference_logps(engine, ds, collate_fn, batch_size, device, f"reference ({name})", progress)
                  for name, ds in datasets.items()}
        if dist.get_rank() == 0:
            write_json_atomic(path, {"data_fingerprint": data_fingerprint,
                                     "tables": {name: t.tolist() for name, t in tables.items()}})
        dist.barrier()
    for name, ds in datasets.items():
        ds.set_reference(tables[name])


def _say(line: str) -> None:
    if dist.get_rank() == 0:
        print(f"[zhllama] {line}", flush=True)


def _read_reference(path: Path, data_fingerprint: str | None, datasets: dict[str, Any], what: str,
                    items: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: missing. A {what} run keeps the starting model's log-probabilities there; without "
                        f"them it cannot resume (the starting model is gone after step 1). Start the run again "
                        f"in a new output_dir")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); start the run again in a new output_dir") from None
    if saved.get("data_fingerprint") != data_fingerprint:
        raise UserError(f"{path}: made for other data (data fingerprint {saved.get('data_fingerprint')}, this run's "
                        f"{data_fingerprint})")
    tables = {name: torch.tensor(rows, dtype=torch.float64).reshape(-1, 2) for name, rows in saved["tables"].items()}
    for name, ds in datasets.items():
        if name not in tables or tuple(tables[name].shape) != (len(ds), 2):
            raise UserError(f"{path}: holds no reference for the {len(ds)} {name} {items} of this run")
    return tables
