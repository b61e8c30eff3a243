"""Next-token losses of a batch without ever holding its [batch x length x vocab] fp32 logits.

    losses = token_losses(model, ids, attention_mask)   # [B, S - 1] nats; 0 where the target is padding
    logp, mean, std = token_log_prob_stats(model, ids, attention_mask)   # Min-K%++'s per-token numbers

At 2,000 tokens and a 150K vocabulary (Qwen, Llama-3) one row's fp32 logits are 1.2 GB: the head is
applied ``chunk`` positions at a time to the decoder's last hidden states. Models whose head does
more than a matmul (Gemma's logit softcap, Cohere's logit scale) use their own logits instead.
Shared by ``evaluation long-context``, ``evaluation membership`` and ``corpora perplexity``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_CHUNK = 1024


def _chunked_logits(model, ids: torch.Tensor, attention_mask: torch.Tensor | None, chunk: int):
    """(start, float32 logits of positions start..start+n that predict the next token) over ``[B, S - 1]``."""
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) is not None:
        yield 0, model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        return
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    for s in range(0, ids.size(1) - 1, chunk):
        yield s, head(hidden[:, s : min(s + chunk, ids.size(1) - 1)]).float()


@torch.no_grad()
def token_losses(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """Losses in nats (float32) of each next token of a ``[B, S]`` batch: ``[B, S - 1]``, 0 at padded targets."""
    labels = ids[:, 1:] if attention_mask is None else ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    pieces = []
    for s, logits in _chunked_logits(model, ids, attention_mask, chunk):
        pieces.append(F.cross_entropy(logits.transpose(1, 2), labels[:, s : s + logits.size(1)], ignore_index=-100,
                                      reduction="none"))
    return torch.cat(pieces, dim=1)


@torch.no_grad()
def token_log_prob_stats(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         chunk: int = LOGIT_CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per next token of a ``[B, S]`` batch, each ``[B, S - 1]`` float32: the token's log-probability, and
    the mean and standard deviation of the log-probability over the whole vocabulary under the model's
    own distribution (E[log p], sqrt(E[log p^2] - E[log p]^2): Min-K%++'s normalisers). Padded targets: 0."""
    target = ids[:, 1:]
    keep = torch.ones_like(target, dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:] != 0
    logp, mean, std = [], [], []
    for s, logits in _chunked_logits(model, ids, attention_mask, chunk):
        log_probs = logits.log_softmax(-1)
        probs = log_probs.exp()
        mu = (probs * log_probs).sum(-1)
        var = (probs * log_probs.square()).sum(-1) - mu.square()
        logp.append(log_probs.gather(-1, target[:, s : s + logits.size(1), None]).squeeze(-1))
        mean.append(mu)
        std.append(var.clamp(min=0).sqrt())
    k = keep.float()
    return torch.cat(logp, 1) * k, torch.cat(mean, 1) * k, torch.cat(std, 1) * k
