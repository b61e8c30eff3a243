"""Prompts for ``objective: grpo``: records, validation, prompt ids, dataset and collator.

Accepted records (a JSON array or JSON Lines, like instruction files): a prompt in any shape the
preference data take — ``{"prompt": "..." | [messages ending with the user's turn]}``,
``{"instruction", "input"?, "system"?, "history"?}``, ``{"conversations"|"messages": [... the user's
turn last]}``, ``{"question"}`` — and the reference the rewards check, as ``answer`` (a string or a
number), else ``output`` (a worked solution: BELLE's school math, GSM8K's ``… #### 72``). A record
without one is refused when a reward needs it (sft/rewards.py). Only the prompt is tokenized; the
model writes the answers during training. Holdout, weights and exclude lists are the instruction
data's (sft/mixture.py); a prompt longer than ``data.max_seq_length - grpo.max_new_tokens`` is left
out and counted.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from zhllama.errors import UserError
from zhllama.files import sha256_file, sha256_json

from .config import SFTData
from .data import Conversation, RecordError
from .mixture import MixReport, SourceFile, read_and_validate
from .pairs import prompt_of
from .templates import TemplateSpec, encode_prompt


@dataclass(frozen=True)
class PromptRecord:
    prompt: Conversation
    reference: str | None  # what the built-in rewards compare with
    raw: dict  # the record as read, for custom rewards


def _reference(record: dict) -> str | None:
    for key in ("answer", "output"):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RecordError(f"`{key}` must be a string or a number, got {type(value).__name__}")
        if not str(value).strip():
            raise RecordError(f"`{key}` is empty")
        return str(value)
    return None


def parser(needs_reference: bool):
    """A record reader for read_and_validate: the prompt and the reference, checked."""

    def parse(record: Any) -> PromptRecord:
        if not isinstance(record, dict):
            raise RecordError(f"expected a JSON object, got {type(record).__name__}")
        reference = _reference(record)
        if needs_reference and reference is None:
            raise RecordError("missing `answer` (or `output`): the rewards compare the model's answer with it")
        context = {k: v for k, v in record.items() if k not in ("answer", "output")}
        return PromptRecord(prompt_of(context, "the answer is written by the model"), reference, record)

    return parse


def read_prompts(sources: list[SourceFile], needs_reference: bool) -> list:
    """Parse every file; one UserError with every malformed record of every file."""
    return read_and_validate(sources, parse=parser(needs_reference), what="GRPO prompts")


class PromptDataset(Dataset):
    """Item i: a prompt's ids and its key (the record's place in ``references``/``records``)."""

    def __init__(self, prompts: list[list[int]], keys: list[int]):
        self.prompts, self.keys = prompts, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        return {"input_ids": torch.tensor(self.prompts[key], dtype=torch.long), "prompt_key": key}


@dataclass
class PromptCollator:
    """Left-pads prompts (generation appends to the right) with an attention mask; ``prompt_keys`` per row."""

    pad_token_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, width - n:] = item["input_ids"]
            mask[row, width - n:] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "prompt_keys": torch.tensor([item["prompt_key"] for item in items], dtype=torch.long)}


@dataclass
class PromptData:
    train: PromptDataset
    eval: PromptDataset | None
    report: MixReport
    references: list[str | None]
    records: list[dict]
    conversations: list[Conversation]  # per prompt key, what the judge reward reads as the question


def build_prompt_datasets(data: SFTData, tokenizer: Any, spec: TemplateSpec, tok_fingerprint: str, order_seed: int,
                          validated: tuple[list[SourceFile], list], max_new_tokens: int) -> PromptData:
    """Train and eval prompts (eval: the held-out records, each once), their references and raw records."""
    from corpora.manifest import repeat_count

    sources, parsed = validated
    room = data.max_seq_length - max_new_tokens
    report = MixReport()
    prompts, references, records, conversations, train, evaluation, files = [], [], [], [], [], [], []
    for source, (items, keys, held, excluded) in zip(sources, parsed):
        too_long = 0
        for item, key, is_held, is_excluded in zip(items, keys, held, excluded):
            ids = encode_prompt(item.prompt, tokenizer, spec)
            if is_excluded or len(ids) > room:
                too_long += not is_excluded
                continue
            prompt_key = len(prompts)
            prompts.append(ids)
            references.append(item.reference)
            records.append(item.raw)
            conversations.append(item.prompt)
            if is_held:
                evaluation.append(prompt_key)
            else:
                train.extend([prompt_key] * repeat_count(source.weight, data.mix_seed, key.hex()))
        files.append({"name": source.name, "sha256": sha256_file(source.path), "weight": source.weight,
                      "holdout": [source.holdout_fraction, source.holdout_salt]})
        report.files[source.name] = {"path": str(source.path), "weight": source.weight, "records": len(items),
                                     "prompts_too_long": too_long, "held_out_records": int(sum(held)),
                                     "excluded_records": int(sum(excluded))}
    if not train:
        raise UserError("no training prompts left (all files empty, weight 0, held out, or longer than "
                        f"data.max_seq_length - grpo.max_new_tokens = {room} tokens)")
    random.Random(order_seed).shuffle(train)
    report.train_samples = report.train_rows = len(train)
    report.eval_samples = len(evaluation)
    report.fingerprint = sha256_json({"files": files, "tokenizer": tok_fingerprint, "template": asdict(spec),
                                      "mix_seed": data.mix_seed, "order_seed": order_seed, "room": room,
                                      "objective": "grpo"})
    return PromptData(PromptDataset(prompts, train), PromptDataset(prompts, evaluation) if evaluation else None,
                      report, references, records, conversations)
