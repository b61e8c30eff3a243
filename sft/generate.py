"""Answer prompts with a trained model and its saved template; score against references.

Batches are left-padded (decoder-only models continue from the last position, so every prompt
must end at the same column). Prompts are sorted by length before batching to waste little
padding; results come back in input order.

Automatic score: character-level ROUGE-L F1 (longest common subsequence of characters). Chinese
has no spaces, so word-level metrics would measure the segmenter (jieba) as much as the model;
characters are the unit Chinese evaluation tools commonly use (e.g. LCSTS summarization reports
character ROUGE). The LCS rewards content in the right order without requiring exact wording, costs
O(len·len) per pair with no extra dependency, and is deterministic. It is a cheap proxy for
regression checks, not a judgement of quality: BELLE's own evaluation asks a strong LLM to grade
answers against ``std_answer``; the JSONL written here is what ``python -m evaluation judge`` reads.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from zhllama.model_folder import require_model_folder

from .answer_health import health
from .data import PromptItem
from .templates import TemplateSpec, encode_prompt, make_spec, pad_token_id, stop_ids


@dataclass
class Sampling:
    max_new_tokens: int = 512
    do_sample: bool = False  # greedy by default: reproducible predictions for scoring
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.1
    seed: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                  "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


def load_tokenizer_and_template(model_dir: str | Path, template: str | None = None):
    """(tokenizer, template spec) of an exported folder; the saved template unless overridden."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    require_model_folder(model_dir, "--model")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return tokenizer, make_spec(template, tokenizer) if template else TemplateSpec.load(model_dir)


def load_model(model_dir: str | Path, template: str | None = None, dtype: str = "float32"):
    """(model, tokenizer, template spec) of an exported folder; the saved template unless overridden."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, spec = load_tokenizer_and_template(model_dir, template)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer, spec


def generate_ids(model: Any, tokenizer: Any, prompts: Sequence[list[int]], sampling: Sampling,
                 streamer: Any = None, stop: Sequence[int] | None = None) -> list[list[int]]:
    """New token ids for each prompt (one batch, left-padded), each cut before its first ``stop`` id
    (default: EOS; pass ``templates.stop_ids(tokenizer, spec)`` to stop where the template's reply ends)."""
    import torch

    stop = list(stop) if stop is not None else [tokenizer.eos_token_id]

    width = max(len(p) for p in prompts)
    pad = pad_token_id(tokenizer)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), pad_token_id=pad,
                             eos_token_id=stop, streamer=streamer, **sampling.generate_kwargs())
    results = []
    for row in out[:, width:].tolist():
        ends = [k for k, token in enumerate(row) if token in stop]
        results.append(row[:ends[0]] if ends else row)
    return results


def encode_prompts(tokenizer: Any, spec: TemplateSpec, items: Sequence[PromptItem],
                   max_prompt_tokens: int | None = None) -> list[list[int]]:
    """The template's prompt ids of each item (the ids training used), cut to the last
    ``max_prompt_tokens``: the instruction to answer is at the end."""
    prompts = [encode_prompt(item.conversation, tokenizer, spec) for item in items]
    return [p[-max_prompt_tokens:] for p in prompts] if max_prompt_tokens else prompts


def generate_all(model: Any, tokenizer: Any, spec: TemplateSpec, items: Sequence[PromptItem], sampling: Sampling,
                 batch_size: int = 8, max_prompt_tokens: int | None = None) -> tuple[list[str], list[bool]]:
    """(answer text, finished) per item: finished means it ended at a stop id, not at max_new_tokens
    (a row that never stops gets exactly max_new_tokens new tokens; one that stops is cut before the stop)."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(sampling.seed)
    prompts = encode_prompts(tokenizer, spec, items, max_prompt_tokens)
    stops = stop_ids(tokenizer, spec)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    finished = [True] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch"):
        batch = order[start:start + batch_size]
        new_ids = generate_ids(model, tokenizer, [prompts[i] for i in batch], sampling, stop=stops)
        for i, ids in zip(batch, new_ids):
            answers[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
            finished[i] = len(ids) < sampling.max_new_tokens
    return answers, finished


# ---------------------------------------------------------------- scoring
def rouge_l_f1_chars(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (whitespace ignored)."""
    a = [c for c in prediction if not c.isspace()]
    b = [c for c in reference if not c.isspace()]
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for ca in a:
        current = [0]
        for j, cb in enumerate(b):
            current.append(previous[j] + 1 if ca == cb else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def score_by_class(items: Sequence[PromptItem], answers: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per class over records with a reference: mean ROUGE-L F1 and exact match (after stripping
    whitespace; meaningful for short answers such as classification labels). 'all' aggregates."""
    sums: dict[str, list[tuple[float, bool]]] = {}
    for item, answer in zip(items, answers):
        if item.reference is None:
            continue
        value = (rouge_l_f1_chars(answer, item.reference), answer.strip() == item.reference.strip())
        for key in (item.category or "(none)", "all"):
            sums.setdefault(key, []).append(value)
    return {k: {"rouge_l_f1_char": round(sum(r for r, _ in v) / len(v), 4),
                "exact_match": round(sum(e for _, e in v) / len(v), 4), "scored": len(v)}
            for k, v in sorted(sums.items())}


def prediction_records(items: Sequence[PromptItem], answers: Sequence[str], finished: Sequence[bool],
                       spec: TemplateSpec) -> list[dict[str, Any]]:
    rows = []
    for index, (item, answer, done) in enumerate(zip(items, answers, finished)):
        last = item.conversation.turns[-1]
        row = {"id": item.record.get("id", index), "class": item.category, "question": last.user}
        if last.input:
            row["input"] = last.input
        if len(item.conversation.turns) > 1:  # the earlier turns, so a judge's verdicts can become DPO pairs
            row["history"] = [[t.user, t.assistant] for t in item.conversation.turns[:-1]]
        if item.conversation.system is not None:
            row["system"] = item.conversation.system
        row.update({"std_answer": item.reference, "prediction": answer,
                    "rouge_l_f1_char": None if item.reference is None else round(rouge_l_f1_chars(answer, item.reference), 4),
                    "template": spec.name})
        row.update(health(last.user + "\n" + last.input, answer, done))
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write next to ``path`` then rename (no half-written predictions file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def settings_dict(sampling: Sampling) -> dict[str, Any]:
    return asdict(sampling)
