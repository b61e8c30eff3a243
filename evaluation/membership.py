"""Was a text in the model's training data? Membership scores from one forward per text, and how well
they separate texts known to be in from texts known to be out.

    scored = score_texts(model, tokenizer, texts, k=0.2, batch_size=8, device="cuda")   # None: too long
    scored[i].scores -> {"loss": ..., "zlib": ..., "min_k": ..., "min_k_plus_plus": ...}
    separation(member_scores, nonmember_scores) -> {"auc": ..., "tpr_at_5_fpr": ..., "threshold": ...}

Every score is larger for a text that looks seen (the papers' sign convention):

- ``loss``: the mean log-likelihood of the text's tokens (Yeom et al., 2018);
- ``zlib``: that mean over the text's zlib-compressed size in bytes (Carlini et al., 2021, as their code
  and MIMIR compute it): a text that is simply easy (repetitive, a list) is not taken for a seen one;
- ``min_k``: the mean of the lowest k share of token log-probabilities (Min-K% Prob, Shi et al., 2024):
  the rare tokens of a seen text are not that unlikely any more;
- ``min_k_plus_plus``: the same over each token's log-probability standardised by the mean and
  deviation of log-probabilities under the model's own next-token distribution (Min-K%++, Zhang et
  al., 2024): a seen text's tokens sit near a local maximum of the likelihood;
- ``reference`` (when a reference model scores the same texts): how much cheaper the text became
  than on the reference, in bits per character — the base model a run started from is the natural
  reference, and bits per character compare across tokenizers (an extended vocabulary included).

A text is ``[START] ids(text)`` (START = BOS, or EOS without one) and its every token is scored.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from zhllama.token_losses import token_log_prob_stats

from .scorer import round_robin

METHODS = ("loss", "zlib", "min_k", "min_k_plus_plus")
# Full-vocabulary values held at once per fp32 copy (3 copies): the statistics pass over them several times,
# which on a CPU runs twice as fast while they stay in cache (measured: 22 vs 45 ms a text at 16 x 256 x 8,000).
STATS_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


@dataclass(frozen=True)
class TextScore:
    tokens: int
    characters: int
    bits_per_char: float
    scores: dict[str, float]


def lowest_share_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest ``k`` share of ``values`` (at least one of them)."""
    count = max(1, int(len(values) * k))
    return float(np.sort(values)[:count].mean())


def text_scores(text: str, logp: np.ndarray, mean: np.ndarray, std: np.ndarray, k: float) -> TextScore:
    """The scores of one text from its tokens' log-probabilities and the vocabulary's mean and deviation."""
    average = float(logp.mean())
    standardised = (logp - mean) / np.maximum(std, 1e-12)
    scores = {"loss": average, "zlib": average / len(zlib.compress(text.encode("utf-8"))),
              "min_k": lowest_share_mean(logp, k), "min_k_plus_plus": lowest_share_mean(standardised, k)}
    return TextScore(len(logp), len(text), float(-logp.sum() / math.log(2) / len(text)), scores)


def start_id(tokenizer) -> int | None:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def text_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int] | None]:
    """``[START] ids(text)`` per text; None for one longer than ``max_length`` tokens or with no token to score."""
    start = start_id(tokenizer)
    out = []
    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
        row = ([start] if start is not None else []) + list(ids)
        out.append(row if 2 <= len(row) <= max_length else None)
    return out


def _padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _forward(model, rows: list[list[int]], device, pad_id: int) -> list[tuple[np.ndarray, ...]]:
    ids, mask = _padded(rows, pad_id)
    budget = STATS_ELEMENTS["cpu" if torch.device(device).type == "cpu" else "cuda"]
    chunk = max(8, budget // (len(rows) * model.get_output_embeddings().weight.shape[0]))
    stats = token_log_prob_stats(model, ids.to(device), mask.to(device), chunk=chunk)
    arrays = [s.double().cpu().numpy() for s in stats]
    return [tuple(a[i, : len(r) - 1] for a in arrays) for i, r in enumerate(rows)]


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str], *, k: float, batch_size: int, device, max_length: int,
                pad_id: int = 0, progress: bool = False) -> list[TextScore | None]:
    """Each text's scores (None for a text that does not fit ``max_length`` tokens)."""
    rows = text_ids(tokenizer, texts, max_length)
    fits = [i for i, r in enumerate(rows) if r is not None]
    got = round_robin([rows[i] for i in fits], len, batch_size, lambda b: _forward(model, b, device, pad_id), progress)
    out: list[TextScore | None] = [None] * len(texts)
    for i, (logp, mean, std) in zip(fits, got):
        out[i] = text_scores(texts[i], logp, mean, std, k)
    return out


def fitting(tokenizer, texts: list[str], max_length: int) -> list[bool]:
    """Whether each text, as ``score_texts`` reads it, fits ``max_length`` tokens."""
    return [row is not None for row in text_ids(tokenizer, texts, max_length)]


def auc(members: list[float], nonmembers: list[float]) -> float:
    """Area under the ROC curve: the chance that a member scores above a non-member (ties count half)."""
    ranked = np.sort(np.asarray(nonmembers, float))
    scores = np.asarray(members, float)
    below = np.searchsorted(ranked, scores, "left")
    tied = np.searchsorted(ranked, scores, "right") - below
    return float((below + tied / 2).sum() / (len(members) * len(nonmembers)))


def separation(members: list[float], nonmembers: list[float], fpr: float = 0.05) -> dict[str, float]:
    """AUC, and the share of members flagged by the threshold that flags at most ``fpr`` of non-members
    (a text is flagged when its score is above ``threshold``; None: every text is)."""
    ranked = sorted(nonmembers, reverse=True)
    allowed = math.floor(fpr * len(ranked) + 1e-9)
    threshold = ranked[allowed] if allowed < len(ranked) else None
    flagged = sum(threshold is None or s > threshold for s in members)
    return {"auc": auc(members, nonmembers), f"tpr_at_{round(fpr * 100)}_fpr": flagged / len(members),
            "threshold": threshold}
