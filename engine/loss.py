"""The language-model loss computed chunk by chunk from hidden states (never B×S×V fp32 logits).

Why: the plain path materialises the full logits and an fp32 copy of them for the cross-entropy —
8 × 2048 tokens × 49,472 ids is 3.2 GB in fp32 for LLaMA-2 + Chinese, 10 GB at Llama-3/Qwen
vocabularies — and keeps them for backward. Here the output projection and the cross-entropy run
on ``loss_chunk_tokens`` labelled positions at a time; the gradients of the hidden states and of
the head's weight are computed in the same pass (the softmax minus the one-hot target, per
chunk), so backward only scales them. Positions labelled -100 (prompts in SFT, document starts,
padding) are dropped before the projection: they cost nothing.

How it plugs in: ``install_fused_head(model)`` replaces the forward of the model's output Linear
with one that, while ``head.zhllama_labels`` is set, returns the summed loss instead of logits (or,
for DPO, each labelled position's log-probability: ``labels_for(..., per_token=True)``).
The model's own forward (HF's ``lm_head(hidden_states)`` call) and DeepSpeed's ZeRO-3 hooks on
that module (gather the partitioned weight before, release it after, gather again for backward)
are unchanged. Without labels set (generation, HF evaluation) the head returns logits as before.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

IGNORE_INDEX = -100


def _chunk_loss(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, grads: bool,
                row_scale: torch.Tensor | None = None):
    """(summed loss of one chunk, the gradient of its logits or None): softmax minus the one-hot
    target (times ``row_scale`` per row when given, in fp32), in the model's dtype."""
    logits = (h @ weight.t()).float()  # the matmul in the model's dtype, as the plain path does
    target = logits.gather(1, y[:, None]).squeeze(1)
    exps, norm, lse = _exp_in_place(logits)
    loss = (lse - target).sum()
    if not grads:
        return loss, None
    grad_logits = exps.div_(norm)
    grad_logits[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    if row_scale is not None:
        grad_logits.mul_(row_scale[:, None].float())
    return loss, grad_logits.to(h.dtype)


def _exp_in_place(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exp(logits - row max) in the logits' own storage, its row sums (keepdim), each row's log-sum-exp).
    In place, since torch.logsumexp and softmax would allocate more chunk-sized temporaries
    (benchmarks/loss_memory.py: 2.4 -> 0.9 GiB at 8 x 2048 tokens, 49,472 ids)."""
    peak = logits.amax(dim=-1, keepdim=True)
    exps = logits.sub_(peak).exp_()
    norm = exps.sum(dim=-1, keepdim=True)
    return exps, norm, (peak + norm.log()).squeeze(1)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, labels), gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None
        # fp32 accumulation across chunks: bf16 sums of many chunks would lose the small updates
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], labels[start:start + chunk]
            loss, grad_logits = _chunk_loss(h, y, weight, want_h or want_w)
            total += loss
            if want_h:
                grad_h[start:start + chunk] = grad_logits @ weight
            if want_w:  # the matmul in the model's dtype (an fp32 one runs ~15x slower on GPUs), summed in fp32
                grad_w += (grad_logits.t() @ h).float()
            del grad_logits  # before the next chunk's logits exist: one chunk alive at a time
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_total.to(torch.float32)
        out_h = (grad_h * scale.to(grad_h.dtype)) if grad_h is not None else None
        out_w = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return out_h, out_w, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int = 4096) -> torch.Tensor:
    """Summed next-token loss (nats) of ``hidden`` (…, H) against ``labels`` (…) already aligned with
    it (label i is the target predicted at position i; -100 = not trained)."""
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    hidden, labels = hidden[keep], labels[keep]
    if not torch.is_grad_enabled():  # evaluation: the loss alone, no gradients computed on the way
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            total += _chunk_loss(hidden[start:start + chunk], labels[start:start + chunk], weight, False)[0]
        return total
    return _LinearCrossEntropy.apply(hidden, weight, labels, chunk)


class _LinearTokenLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[label] per row, chunk by chunk. Unlike the summed loss, each row's
    upstream gradient is only known in backward, so backward recomputes each chunk's logits (one more
    matmul) instead of keeping them: one chunk alive at a time either way."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                entropy: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight, labels)  # under ZeRO-3, weight is gathered again for backward
        ctx.chunk = chunk
        return _token_logps(hidden, weight, labels, chunk, entropy)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, labels = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h, y = hidden[start:start + ctx.chunk], labels[start:start + ctx.chunk]
            # d logp / d logits = -(softmax - one-hot): the summed loss's chunk gradient, scaled per position
            _, grad_logits = _chunk_loss(h, y, weight, True, -grad_out[start:start + ctx.chunk])
            if want_h:
                grad_h[start:start + ctx.chunk] = grad_logits @ weight
            if want_w:
                grad_w += (grad_logits.t() @ h).float()
            del grad_logits  # before the next chunk's logits exist: one chunk alive at a time
        return grad_h, (grad_w.to(weight.dtype) if want_w else None), None, None, None


def _token_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                 entropy: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's log-probability of its label; with ``entropy`` (a row-sized fp32 buffer), each row's
    distribution's entropy written into it too (no gradient: a diagnostic)."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        logits = (hidden[start:start + chunk] @ weight.t()).float()
        target = logits.gather(1, labels[start:start + chunk, None]).squeeze(1)
        exps, norm, lse = _exp_in_place(logits)  # the exps (logits' storage) are not kept
        out[start:start + chunk] = target - lse
        if entropy is not None:  # H = log Z - sum(e^s s) / Z, with s the shifted logits (e^s the exps)
            entropy[start:start + chunk] = norm.log().squeeze(1) - torch.xlogy(exps, exps).sum(1) / norm.squeeze(1)
        del logits, exps
    return out


def linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       chunk: int = 4096, entropy: list | None = None) -> torch.Tensor:
    """fp32 log-probability of each labelled position's label (row-major order; -100 positions left out),
    never materialising more than ``chunk`` positions' logits: DPO's per-answer sums (engine/preference.py).
    With ``entropy`` (a list), each position's distribution's entropy is appended to it, in the same order."""
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    hidden, labels = hidden[keep], labels[keep]
    buffer = None
    if entropy is not None:
        buffer = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        entropy.append(buffer)
    if not torch.is_grad_enabled():
        return _token_logps(hidden, weight, labels, chunk, buffer)
    return _LinearTokenLogps.apply(hidden, weight, labels, chunk, buffer)


def fused_head_of(model) -> torch.nn.Module | None:
    """The output Linear when ``install_fused_head`` was applied to ``model``, else None."""
    try:
        head = output_linear(model)
    except TypeError:
        return None
    return head if hasattr(head, "zhllama_labels") else None


def output_linear(model) -> torch.nn.Module:
    """The Linear that maps hidden states to logits (a PEFT copy when lm_head is a module to save)."""
    head = model.get_output_embeddings()
    copies = getattr(head, "modules_to_save", None)
    if copies is not None:  # PEFT ModulesToSaveWrapper: the active trainable copy does the work
        head = copies[head.active_adapters[0] if hasattr(head, "active_adapters") else "default"]
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise TypeError(f"the fused loss needs a bias-free Linear output layer, got {type(head).__name__}")
    return head


def install_fused_head(model, chunk_tokens: int) -> torch.nn.Module:
    """Make the output Linear return the summed loss while ``zhllama_labels`` is set; returns it."""
    head = output_linear(model)
    plain_forward = head.forward

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        labels = getattr(head, "zhllama_labels", None)
        if labels is None:
            return plain_forward(hidden)
        if head.zhllama_per_token:  # under a temperature T: log softmax(logits / T), GRPO's sampling distribution
            scaled = hidden if head.zhllama_temperature == 1.0 else hidden / head.zhllama_temperature
            return linear_token_logps(scaled, head.weight, labels, chunk_tokens, head.zhllama_entropy)
        return linear_cross_entropy(hidden, head.weight, labels, chunk_tokens)

    head.forward = forward
    head.zhllama_labels = None
    head.zhllama_per_token = False
    head.zhllama_temperature = 1.0
    head.zhllama_entropy = None  # a list while entropies are asked for (labels_for)
    return head


@contextmanager
def labels_for(head: torch.nn.Module, labels: torch.Tensor, per_token: bool = False,
               temperature: float = 1.0, entropy: list | None = None) -> Iterator[None]:
    """While inside, the head computes the loss against ``labels`` (aligned with its input positions):
    summed, or (``per_token``) each labelled position's log-probability, as ``linear_token_logps``, of the
    logits divided by ``temperature`` (and, given the list ``entropy``, appends the positions' entropies)."""
    head.zhllama_labels, head.zhllama_per_token, head.zhllama_temperature = labels, per_token, temperature
    head.zhllama_entropy = entropy
    try:
        yield
    finally:
        head.zhllama_labels, head.zhllama_per_token, head.zhllama_temperature = None, False, 1.0
        head.zhllama_entropy = None


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """HF labels (aligned with input_ids) → targets aligned with the positions that predict them."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted
