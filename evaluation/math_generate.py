"""Answers to math or code prompts from a model loaded here: greedy in batches, or K seeded samples per item."""
from __future__ import annotations

import torch


def end_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and every end id of the model's generation config (a chat model's end of turn,
    Llama-3's <|eot_id|>): an answer ends at any of them."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids if i is not None})


def _left_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list, args, stops: list[str], progress=None,
                     sample_seed=None) -> list[list[str]]:
    """Per prompt (math_eval.MathPrompt, code_eval.CodePrompt: ``ids`` and ``item.key``), ``args.samples``
    answers. Greedy answers come in batches of ``args.batch_size`` (left padding: equal to one at a time);
    sampled ones per item, all its samples in one batch after seeding with the item's seed (``sample_seed``,
    default math's), so they do not depend on which items share a batch."""
    from transformers import GenerationConfig

    if sample_seed is None:
        from .math_eval import sample_seed

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampled = args.temperature > 0
    settings = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=sampled, pad_token_id=pad,
                                eos_token_id=end_ids(model, tokenizer), stop_strings=stops or None,
                                num_return_sequences=args.samples if sampled else 1,
                                **({"temperature": args.temperature, "top_p": args.top_p, "top_k": 0}
                                   if sampled else {}))
    step = 1 if sampled else args.batch_size
    answers: list[list[str]] = []
    for start in range(0, len(prompts), step):
        batch = prompts[start:start + step]
        ids, mask = _left_padded([p.ids for p in batch], pad, args.device)
        if sampled:
            torch.manual_seed(sample_seed(args.seed, batch[0].item.key, 0))
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings,
                             **({"tokenizer": tokenizer} if stops else {}))
        texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        per = len(texts) // len(batch)
        answers += [texts[i * per:(i + 1) * per] for i in range(len(batch))]
        if progress is not None:
            progress.update(len(batch))
    return answers
