"""Does a model use a long context? Loss by position on held-out text, and passkey retrieval.

    windows, available = text_windows(tokenizer, texts, length=16384, count=4)
    losses = loss_by_position(model, windows, lengths=[4096, 8192, 16384], positions=16384, device="cuda")
    prompts = passkey_prompts(tokenizer, lengths=[4096, 16384], depths=[0, 0.5, 1], trials=4, language="zh")
    answers = greedy_answers(model, tokenizer, [p.ids for p in prompts], max_new_tokens=10, device="cuda")

**Loss by position** (how position interpolation, YaRN and LongLoRA show an extension working):
held-out documents, each ``[BOS] text [EOS]``, are joined into one stream cut into windows of the
longest length (or, ``whole_documents``, the start of each document at least that long: for corpora
of books and long articles, where the later tokens really depend on the earlier ones). A causal
model's loss at a position does not depend on what follows it, so one forward per window gives the
loss at every shorter length too: the mean over a window's first L tokens is the loss at context L,
and the mean per stretch of positions shows where it breaks. A model read past the positions it was
trained on fails there abruptly; one that uses a longer context predicts later tokens better.

**Passkey retrieval** (Mohtashami & Jaggi 2023, the test of LongLoRA and YaRN): a random key of
``digits`` digits is hidden at a depth (0 = first, 1 = last) in repeated filler text, the prompt
filling a given number of tokens; the model answers greedily and finds the key if the first number
in its answer is the key. Keys come from the seed, length, depth and trial, so two models (even with
different tokenizers) are asked for the same keys.
"""
from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from zhllama.errors import UserError
from zhllama.token_losses import token_losses

# The wording of Landmark Attention's test, and the same in Chinese. Parts are joined by newlines.
PASSKEY_TEXT = {
    "en": {"intro": "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                    "I will quiz you about the important information there.",
           "filler": "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
           "key": "The pass key is {key}. Remember it. {key} is the pass key.",
           "question": "What is the pass key? The pass key is", "ask": "What is the pass key?", "join": " "},
    "zh": {"intro": "下面的大量无关文字中藏着一条重要信息。找到它并记住它。之后我会问你这条重要信息。",
           "filler": "草是绿的。天是蓝的。太阳是黄的。我们出发吧。去了又回来。",
           "key": "通行密码是{key}。记住它。{key}是通行密码。",
           "question": "通行密码是什么？通行密码是", "ask": "通行密码是什么？", "join": ""},
}


# ---------------------------------------------------------------- loss by position


def text_windows(tokenizer, texts: Iterable[str], length: int, count: int,
                 whole_documents: bool = False) -> tuple[list[list[int]], int]:
    """Up to ``count`` windows of ``length`` tokens, and how many the texts hold (tokenizes only what it needs)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    windows: list[list[int]] = []
    stream: list[int] = []
    for text in texts:
        doc = [start] + tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if whole_documents:
            if len(doc) >= length:
                windows.append(doc[:length])
        else:
            stream.extend(doc)
            while len(stream) >= length:
                windows.append(stream[:length])
                stream = stream[length:]
        if len(windows) >= count:
            break
    return windows[:count], len(windows)


def loss_by_position(model, windows: list[list[int]], lengths: list[int], positions: int | None,
                     batch_size: int = 1, device: str = "cpu", progress=None) -> dict:
    """Mean loss at each context length (over the windows' first L tokens) and per stretch between lengths."""
    longest = lengths[-1]
    total = torch.zeros(longest - 1, dtype=torch.float64)
    for i in range(0, len(windows), batch_size):
        ids = torch.tensor([w[:longest] for w in windows[i : i + batch_size]], device=device)
        total += token_losses(model, ids).double().sum(dim=0).cpu()
        if progress is not None:
            progress.update(ids.size(0))
    per_position = total / len(windows)  # index j: the loss of token j + 1 given tokens 0..j

    def beyond(end: int) -> bool:
        return positions is not None and end > positions

    by_length = {str(n): {"loss": float(per_position[: n - 1].mean()), "beyond_positions": beyond(n)}
                 for n in lengths}
    for row in by_length.values():
        row["perplexity"] = math.exp(min(row["loss"], 700.0))
    edges = [1] + lengths
    stretches = [{"tokens": [a, b - 1], "loss": float(per_position[a - 1 : b - 1].mean()), "beyond_positions": beyond(b)}
                 for a, b in zip(edges, edges[1:]) if b > a]
    return {"windows": len(windows), "by_length": by_length, "by_position": stretches}


# ---------------------------------------------------------------- passkey retrieval


@dataclass(frozen=True)
class PasskeyPrompt:
    length: int  # the token budget asked for; len(ids) is at most this
    depth: float
    trial: int
    key: str
    ids: list[int]
    key_token: int  # where the key sentence starts, in tokens


def passkey_key(seed: int, length: int, depth: float, trial: int, digits: int) -> str:
    rng = random.Random(f"{seed}/{length}/{depth:.4f}/{trial}")
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _passkey_text(language: str, key: str, before: int, after: int, chat: bool = False) -> tuple[str, str]:
    """The whole prompt and the part before the key sentence. A chat model is asked the question in a user
    turn and answers in its own; a base model completes "The pass key is"."""
    t = PASSKEY_TEXT[language]
    head = [t["intro"]] + ([t["join"].join([t["filler"]] * before)] if before else [])
    tail = ([t["join"].join([t["filler"]] * after)] if after else []) + [t["ask" if chat else "question"]]
    return "\n".join(head + [t["key"].format(key=key)] + tail), "\n".join(head) + "\n"


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as one user turn of the tokenizer's chat template, ready for the reply."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


def passkey_prompt(tokenizer, language: str, key: str, length: int, depth: float,
                   chat: bool = False) -> tuple[list[int], int]:
    """Token ids of the longest prompt within ``length`` tokens (the most filler), the key at ``depth``; with
    ``chat`` the text is one user turn of the tokenizer's chat template (tokenized as HF does: no added BOS)."""
    def build(fillers: int) -> tuple[list[int], int]:
        before = round(depth * fillers)
        text, head = _passkey_text(language, key, before, fillers - before, chat)
        if not chat:
            return tokenizer(text).input_ids, len(tokenizer(head).input_ids)
        rendered = chat_prompt(tokenizer, text)
        ids = tokenizer(rendered, add_special_tokens=False).input_ids
        return ids, round(len(ids) * rendered.index(head) / len(rendered)) + len(tokenizer(head).input_ids)

    bare = len(build(0)[0])
    if bare > length:
        raise UserError(f"passkey length {length}: the prompt without filler already has {bare} tokens; "
                        f"give lengths of at least {bare}")
    per_filler = max(1, len(build(8)[0]) - bare) / 8
    fillers = max(0, int((length - bare) / per_filler))
    while fillers > 0 and len(build(fillers)[0]) > length:
        fillers -= 1
    while len(build(fillers + 1)[0]) <= length:
        fillers += 1
    return build(fillers)


def passkey_prompts(tokenizer, lengths: list[int], depths: list[float], trials: int, language: str,
                    digits: int = 5, seed: int = 0, chat: bool = False) -> list[PasskeyPrompt]:
    if chat and not getattr(tokenizer, "chat_template", None):
        raise UserError("--chat: the model's tokenizer has no chat template (tokenizer_config.json / "
                        "chat_template.jinja); ask it as a base model, without --chat")
    out = []
    for length in lengths:
        for depth in depths:
            for trial in range(trials):
                key = passkey_key(seed, length, depth, trial, digits)
                ids, key_token = passkey_prompt(tokenizer, language, key, length, depth, chat)
                out.append(PasskeyPrompt(length, depth, trial, key, ids, key_token))
    return out


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 1,
                   device: str = "cpu", progress=None, stop: list[str] | None = None) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding (results equal one at a time);
    a continuation ends at the first of ``stop`` (kept in the text) or the end-of-sequence token."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                eos_token_id=tokenizer.eos_token_id, stop_strings=stop)
    answers = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings,
                             **({"tokenizer": tokenizer} if stop else {}))
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        if progress is not None:
            progress.update(len(batch))
    return answers


def first_number(answer: str) -> str | None:
    """The first run of digits in an answer (full-width digits read as ASCII), or None."""
    match = re.search(r"[0-9]+", unicodedata.normalize("NFKC", answer))
    return match.group(0) if match else None


def passkey_summary(prompts: list[PasskeyPrompt], answers: list[str], depths: list[float]) -> dict:
    items = [{"length": p.length, "depth": p.depth, "trial": p.trial, "key": p.key, "prompt_tokens": len(p.ids),
              "key_token": p.key_token, "answer": a, "found": first_number(a) == p.key}
             for p, a in zip(prompts, answers)]
    grid: dict[str, dict[str, float]] = {}
    for length in sorted({p.length for p in prompts}):
        row = [i for i in items if i["length"] == length]
        grid[str(length)] = {f"{d:g}": _share([i for i in row if i["depth"] == d]) for d in depths}
        grid[str(length)]["all"] = _share(row)
    return {"found": _share(items), "by_length_and_depth": grid, "items": items}


def _share(items: list[dict]) -> float:
    return sum(i["found"] for i in items) / len(items) if items else float("nan")
