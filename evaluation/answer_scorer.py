"""How likely is the reference answer after its prompt, and would greedy decoding write it? One forward.

    requests = [AnswerRequest(prompt_ids, answer_ids), ...]
    scores = score_answers(model, requests, batch_size=8, device="cuda")   # [(log-prob in nats, greedy), ...]

Generation costs a forward per answer token; reading the answer's own tokens after the prompt costs
one forward for all of them: the summed log-probability of the answer, and whether every answer token
is the most likely next token (then greedy decoding writes exactly the answer, its tokenization aside).
Rows are left-padded with their positions counted from their first real token, so a batch scores as
its rows alone (tested); only the answers' positions get logits. ``model`` may be a DeepSpeed engine:
under torch.distributed every rank calls with the same requests (evaluation/scorer.py's round robin).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .scorer import round_robin


@dataclass(frozen=True)
class AnswerRequest:
    prompt: list[int]
    answer: list[int]


def _forward(model, batch: list[AnswerRequest], device, pad_id: int) -> list[tuple[float, bool]]:
    width = max(len(r.prompt) + len(r.answer) for r in batch)
    keep = max(len(r.answer) for r in batch) + 1
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):
        row = r.prompt + r.answer
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   use_cache=False, logits_to_keep=keep).logits
    out = []
    for i, r in enumerate(batch):
        m = len(r.answer)
        rows = logits[i, keep - m - 1 : keep - 1].float().log_softmax(-1)  # the positions that predict the answer
        target = torch.tensor(r.answer, device=rows.device)
        out.append((float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())))
    return out


@torch.no_grad()
def score_answers(model, requests: list[AnswerRequest | None], batch_size: int, device, pad_id: int = 0,
                  progress: bool = False) -> list[tuple[float, bool] | None]:
    """(log-probability of the answer in nats, greedy decoding writes it) per request, on every rank; None
    for a None request (a prompt that did not fit the model)."""
    fits = [i for i, r in enumerate(requests) if r is not None]
    got = round_robin([requests[i] for i in fits], lambda r: len(r.prompt) + len(r.answer), batch_size,
                      lambda batch: _forward(model, batch, device, pad_id), progress)
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    for i, value in zip(fits, got):
        out[i] = value
    return out


def answer_ids(tokenizer, rendered: str, special: bool, prompt_ids: list[int], answer: str) -> list[int]:
    """The answer's tokens as they follow the prompt (``rendered``, tokenized with ``special`` tokens into
    ``prompt_ids``): read off the tokenized prompt + answer when the prompt's tokens are its prefix (no
    piece spans the seam), else the answer tokenized alone."""
    whole = tokenizer(rendered + answer, add_special_tokens=special).input_ids
    if whole[: len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return whole[len(prompt_ids):]
    return tokenizer(answer, add_special_tokens=False).input_ids
