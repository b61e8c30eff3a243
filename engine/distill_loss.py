"""The divergence between a student's and a teacher's next-token distributions (knowledge distillation), per
answer position, as GKD defines it (Agarwal et al. 2024, "On-Policy Distillation of Language Models"; TRL's
``generalized_jsd_loss``), of the distributions p = softmax(z_student / T) and q = softmax(z_teacher / T):

    beta = 0:      KL(q || p)                           forward KL: the teacher's word-level KD (Hinton; MiniLLM's "KD")
    beta = 1:      KL(p || q)                           reverse KL: mode seeking (MiniLLM; on-policy distillation)
    0 < beta < 1:  beta KL(q || m) + (1 - beta) KL(p || m),  m = beta q + (1 - beta) p   (generalized JSD)

Two ways to compute it, which the tests hold equal:

* ``token_divergence``: from both models' logits, by autograd (the model's logits exist in full: the plain head).
* ``linear_divergence``: from hidden states and both output layers, ``chunk`` positions at a time, with the
  gradient written out so that backward only scales it (as engine/loss.py does for the cross-entropy): neither
  model's B x S x V logits ever exist. With s = z_student / T and the value D, dD/ds_j = p_j (g_j - sum_k p_k g_k)
  for g = dD/dp: forward KL gives p - q; reverse KL p (log p - log q - D); the JSD (1 - beta) log(p / m).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

from .loss import IGNORE_INDEX, output_linear


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                     temperature: float = 1.0) -> torch.Tensor:
    """Per row of (rows x V) logits, the divergence above (fp32; differentiable in the student's logits)."""
    log_p = (student_logits.float() / temperature).log_softmax(dim=-1)
    log_q = (teacher_logits.float() / temperature).log_softmax(dim=-1)
    if beta == 0:
        return (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    if beta == 1:
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
    return (beta * (log_q.exp() * (log_q - log_m)).sum(dim=-1)
            + (1 - beta) * (log_p.exp() * (log_p - log_m)).sum(dim=-1))


def _log_softmax_(x: torch.Tensor) -> torch.Tensor:
    """log_softmax in place: the row max first, as torch's own, so that the log-sum-exp is of numbers near 0."""
    x.sub_(x.amax(dim=-1, keepdim=True))
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, sum(a * b), without an (a * b)-sized temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _chunk(s: torch.Tensor, t: torch.Tensor, beta: float, grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-row divergence, its gradient in the scaled student logits ``s`` or None), from fp32 scaled logits. In
    place: ``s`` and ``t`` are used up, and at most two more chunk-sized buffers exist (the vocabulary is wide:
    each buffer is chunk x V fp32)."""
    log_p, log_q = _log_softmax_(s), _log_softmax_(t)
    if beta == 0:  # value sum q (log q - log p), gradient p - q
        q = log_q.exp()
        value = _row_dot(q, log_q.sub_(log_p))
        return value, (log_p.exp_().sub_(q) if grads else None)
    if beta == 1:  # value sum p (log p - log q), gradient p (log p - log q - value)
        gap = log_q.sub_(log_p).neg_()
        p = log_p.exp_()
        value = _row_dot(p, gap)
        return value, (gap.sub_(value[:, None]).mul_(p) if grads else None)
    # log m = logaddexp(log p + log(1 - beta), log q + log beta), in log space (p and q may underflow in fp32)
    log_m = log_p + math.log1p(-beta)
    torch.logaddexp(log_m, log_q + math.log(beta), out=log_m)
    prob = log_q.exp()  # q, then p
    to_teacher = _row_dot(prob, log_q.sub_(log_m))  # sum q (log q - log m)
    torch.exp(log_p, out=prob)
    to_m = log_p.sub_(log_m)  # log p - log m: dD/dp = (1 - beta) (log p - log m)
    to_student = _row_dot(prob, to_m)
    value = beta * to_teacher + (1 - beta) * to_student
    if not grads:
        return value, None
    return value, to_m.sub_(to_student[:, None]).mul_(prob).mul_(1 - beta)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 logits / temperature, in the matmul's own fresh buffer where it is fp32 already."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits.div_(temperature)


class _LinearDivergence(torch.autograd.Function):
    """sum over rows of the divergence of (hidden @ weight.T, teacher_hidden @ teacher_weight.T), gradients
    computed in forward, one chunk of both models' logits alive at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, teacher_hidden, teacher_weight, beta: float, temperature: float, chunk: int):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            s = _scaled(h @ weight.t(), temperature)
            t = _scaled(teacher_hidden[start:start + chunk] @ teacher_weight.t(), temperature)
            value, grad_s = _chunk(s, t, beta, want_h or want_w)
            del s, t
            total += value.sum()
            if grad_s is None:
                continue
            grad_z = grad_s.div_(temperature).to(h.dtype)  # s = z / T
            del grad_s
            if want_h:
                grad_h[start:start + chunk] = grad_z @ weight
            if want_w:  # the matmul in the model's dtype, summed in fp32 (as engine/loss.py)
                grad_w += (grad_z.t() @ h).float()
            del grad_z
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_total.to(torch.float32)
        out_h = grad_h * scale.to(grad_h.dtype) if grad_h is not None else None
        out_w = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return out_h, out_w, None, None, None, None, None


def linear_divergence(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, teacher_hidden: torch.Tensor,
                      teacher_weight: torch.Tensor, beta: float, temperature: float = 1.0,
                      chunk: int = 4096) -> torch.Tensor:
    """Summed divergence over the labelled positions of ``hidden`` (..., H) (``labels`` aligned with it, -100: not
    trained); ``teacher_hidden`` holds the teacher's hidden states at those positions only, in order (N, H_t)."""
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    hidden = hidden[labels != IGNORE_INDEX]
    if hidden.shape[0] != teacher_hidden.shape[0]:
        raise RuntimeError(f"distillation: {hidden.shape[0]} student positions, {teacher_hidden.shape[0]} teacher's")
    teacher_weight = teacher_weight.to(teacher_hidden.dtype)
    return _LinearDivergence.apply(hidden, weight, teacher_hidden, teacher_weight, beta, temperature, chunk)


# ---------------------------------------------------------------------- the heads
def install_divergence_head(model, chunk_tokens: int) -> torch.nn.Module:
    """The student's output Linear computes ``linear_divergence`` while ``zhllama_teacher`` is set (see
    ``teacher_for``), as it is, fused or not, otherwise; returns it."""
    head = output_linear(model)
    as_it_was = head.forward

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        teacher = head.zhllama_teacher
        if teacher is None:
            return as_it_was(hidden)
        labels, teacher_hidden, teacher_weight, beta, temperature = teacher
        return linear_divergence(hidden, head.weight, labels, teacher_hidden, teacher_weight, beta, temperature,
                                 chunk_tokens)

    head.forward = forward
    head.zhllama_teacher = None
    return head


@contextmanager
def teacher_for(head: torch.nn.Module, labels: torch.Tensor, teacher_hidden: torch.Tensor,
                teacher_weight: torch.Tensor, beta: float, temperature: float) -> Iterator[None]:
    """While inside, the student's forward returns the summed divergence to the teacher at ``labels``' positions."""
    head.zhllama_teacher = (labels, teacher_hidden, teacher_weight, beta, temperature)
    try:
        yield
    finally:
        head.zhllama_teacher = None


def install_hidden_head(model) -> torch.nn.Module:
    """The teacher's output Linear returns its input, the last hidden states, while ``zhllama_hidden`` is set: the
    teacher's forward then ends before its logits (ZeRO-3's hooks on the head run as ever)."""
    head = output_linear(model)
    plain_forward = head.forward

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return hidden if head.zhllama_hidden else plain_forward(hidden)

    head.forward = forward
    head.zhllama_hidden = False
    return head


@contextmanager
def hidden_states_of(head: torch.nn.Module) -> Iterator[None]:
    head.zhllama_hidden = True
    try:
        yield
    finally:
        head.zhllama_hidden = False
