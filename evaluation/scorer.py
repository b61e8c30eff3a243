"""Letter-logit scoring: after the prompt, which of the tokens "A", "B", "C", "D" is most likely?

    requests = encode_requests(tokenizer, prompts, continuations("ceval"), max_length=2048)
    logprobs = score_requests(model, requests, batch_size=8, device="cuda")   # [[lp_A, lp_B, lp_C, lp_D], ...]

``model`` is anything called like a Hugging Face causal LM: a plain model, a PEFT model or a
DeepSpeed engine. Under torch.distributed (ZeRO-3) every rank must call ``score_requests`` with
the same requests: the batches are dealt round-robin, every rank runs the same number of
forwards (a rank with no batch left repeats one and discards it, because ZeRO-3 gathers
parameters collectively) and the results are gathered on every rank. Values are log-softmax over
the whole vocabulary at the last prompt position, the quantity lm-evaluation-harness reports for
a one-token continuation, so the two can be compared item by item.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zhllama.errors import UserError


@dataclass(frozen=True)
class Request:
    ids: list[int]  # prompt tokens, left-truncated to max_length
    letter_ids: list[int]  # the token of each continuation, in A-D order


def encode_requests(tokenizer, prompts: list[str], conts: list[str], max_length: int | None = None) -> list[Request]:
    """Tokenize each prompt and find the one token each continuation adds to it.

    The continuation's token is read from ``tokenize(prompt + continuation)`` (as a model would see
    the answer written after the prompt), and the prompt's tokens must be a prefix of it; a
    tokenizer that merges the letter into the prompt's last piece cannot be scored by one logit.
    """
    out = []
    for prompt in prompts:
        batch = tokenizer([prompt] + [prompt + c for c in conts]).input_ids
        ctx, letters = batch[0], []
        for cont, whole in zip(conts, batch[1:]):
            if whole[: len(ctx)] != ctx or len(whole) != len(ctx) + 1:
                raise UserError(
                    f"the tokenizer does not write continuation {cont!r} as one token after the prompt "
                    f"(prompt ends {prompt[-20:]!r}: {len(ctx)} tokens, with {cont!r}: {len(whole)}); "
                    f"letter-logit scoring needs a single-token answer letter"
                )
            letters.append(whole[-1])
        if max_length is not None and len(ctx) > max_length:
            ctx = ctx[-max_length:]  # keep the question; drop the oldest exemplar text (as lm-eval does)
        out.append(Request(ctx, letters))
    return out


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _forward_last(model, batch: list[Request], device, pad_id: int) -> torch.Tensor:
    """Log-softmax of the four letters at each request's last position: [len(batch), 4]."""
    lengths = torch.tensor([len(r.ids) for r in batch])
    width = int(lengths.max())
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):  # right padding: earlier positions never see the pads (causal)
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = 1
    last = lengths - 1
    keep = torch.unique(last)  # logits only where they are read: a 150k vocabulary x 2k positions is GBs
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                   logits_to_keep=keep.to(device)).logits
    rows = logits[torch.arange(len(batch), device=logits.device), torch.searchsorted(keep, last).to(logits.device)]
    letters = torch.tensor([r.letter_ids for r in batch], device=rows.device)
    return rows.float().log_softmax(-1).gather(1, letters).cpu()


@torch.no_grad()
def score_requests(model, requests: list[Request], batch_size: int, device, pad_id: int = 0,
                   progress: bool = False) -> list[list[float]]:
    """Four log-probabilities per request, in request order, on every rank."""
    return round_robin(requests, lambda r: len(r.ids), batch_size,
                       lambda batch: [row.tolist() for row in _forward_last(model, batch, device, pad_id)], progress)


def round_robin(requests: list, length, batch_size: int, forward, progress: bool = False) -> list:
    """``forward(batch)`` -> one result per request, for every request, in request order, on every rank.
    Batches of similar lengths are dealt round-robin; every rank runs the same number of forwards (a rank
    with no batch left repeats the shortest and discards it: ZeRO-3 gathers parameters collectively)."""
    rank, world = _dist()
    order = sorted(range(len(requests)), key=lambda i: (-length(requests[i]), i))  # similar lengths batch together
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rounds = math.ceil(len(batches) / world)
    from tqdm.auto import tqdm

    mine: dict[int, object] = {}
    for r in tqdm(range(rounds), desc="score", unit="batch", disable=not progress or rank != 0):
        k = r * world + rank
        real = k < len(batches)
        chosen = batches[k] if real else batches[-1]  # the shortest batch: a cheap discarded forward
        values = forward([requests[i] for i in chosen])
        if real:
            mine.update(zip(chosen, values))
    if world > 1:
        import torch.distributed as dist

        gathered: list[dict] = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = {k: v for part in gathered for k, v in part.items()}
    return [mine[i] for i in range(len(requests))]
