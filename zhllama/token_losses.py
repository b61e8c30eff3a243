"""Next-token losses of a batch without ever holding its [batch x length x vocab] fp32 logits.

    losses = token_losses(model, ids, attention_mask)   # [B, S - 1] nats; 0 where the target is padding

At 2,000 tokens and a 150K vocabulary (Qwen, Llama-3) one row's fp32 logits are 1.2 GB: the head is
applied ``chunk`` positions at a time to the decoder's last hidden states. Models whose head does
more than a matmul (Gemma's logit softcap, Cohere's logit scale) use their own logits instead.
Shared by ``evaluation long-context`` and ``corpora perplexity``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_CHUNK = 1024


@torch.no_grad()
def token_losses(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """Losses in nats (float32) of each next token of a ``[B, S]`` batch: ``[B, S - 1]``, 0 at padded targets."""
    labels = ids[:, 1:] if attention_mask is None else ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) is not None:
        logits = model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    pieces = []
    for s in range(0, ids.size(1) - 1, chunk):
        logits = head(hidden[:, s : min(s + chunk, ids.size(1) - 1)]).float()
        pieces.append(F.cross_entropy(logits.transpose(1, 2), labels[:, s : s + chunk], ignore_index=-100,
                                      reduction="none"))
    return torch.cat(pieces, dim=1)
