"""Preference pairs for ``objective: dpo``: records, validation, tokenized pairs, dataset and collator.

Accepted records (a JSON array or JSON Lines, like instruction files):

* ``{"instruction", "input"?, "system"?, "history"?, "chosen", "rejected"}`` (LLaMA-Factory's Alpaca pairs);
* ``{"prompt": "...", "chosen", "rejected", "system"?}`` (TRL's standard form, UltraFeedback as text);
* ``{"conversations"|"messages"|"prompt": [messages ending with the user's turn], "chosen", "rejected"}``
  (LLaMA-Factory's ShareGPT pairs, TRL's conversational form).

``chosen`` / ``rejected`` are the two answers to the same prompt: a string, an assistant message
(``{"from"|"role": ..., "value"|"content": ...}``) or a list holding one. Both are encoded with the
run's template like SFT data; only the final answer (and its EOS) is labelled. Files go through the
same validation (every bad record with its file and number), holdout, weights, exclude lists and
content-keyed tokenization cache as instruction data (sft/mixture.py, sft/cache.py).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zhllama.errors import UserError
from zhllama.files import sha256_json

from .collate import SFTCollator, TokenizedSamples
from .config import SFTData
from .data import ASSISTANT_ROLES, Conversation, RecordError, parse_record
from .mixture import MixReport, SourceFile, read_and_validate
from .templates import IGNORE_INDEX, TemplateSpec

_CONTEXT_KEYS = ("instruction", "conversations", "messages")


def answer_field(record: dict, key: str) -> str:
    if key not in record:
        raise RecordError(f"missing `{key}` (a preference pair needs `chosen` and `rejected`)")
    value = record[key]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        role = value.get("from", value.get("role"))
        if not isinstance(role, str) or role.lower() not in ASSISTANT_ROLES:
            raise RecordError(f"`{key}` must be the assistant's answer, got a message from {role!r}")
        value = value.get("value", value.get("content"))
    if not isinstance(value, str):
        raise RecordError(f"`{key}` must be a string or one assistant message, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"`{key}` is empty")
    return value


def parse_pair(record: Any) -> tuple[Conversation, Conversation]:
    """One raw record → (conversation ending in the chosen answer, the same ending in the rejected one)."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    chosen, rejected = answer_field(record, "chosen"), answer_field(record, "rejected")
    if chosen == rejected:
        raise RecordError("`chosen` and `rejected` are the same text: nothing to prefer")
    context = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    if "output" in context:
        raise RecordError("`output` next to `chosen`/`rejected`: which answer is the record's? (remove `output`)")
    prompt = prompt_of(context, "the answers are `chosen` and `rejected`")
    return prompt.with_answer(chosen), prompt.with_answer(rejected)


def prompt_of(context: dict, answers: str) -> Conversation:
    """The conversation a record's separately given answers follow (TRL's ``prompt``, or the instruction
    fields): it must end with the user's turn. ``answers`` says, in an error, where the answers are."""
    context = dict(context)
    if "prompt" in context and not any(k in context for k in _CONTEXT_KEYS):
        prompt = context.pop("prompt")
        context["messages" if isinstance(prompt, list) else "instruction"] = prompt
    conv = parse_record(context, need_answer=False)
    if conv.turns[-1].assistant is not None:
        raise RecordError(f"the prompt must end with the user's turn ({answers})")
    return conv


def read_pairs(sources: list[SourceFile]) -> list:
    """Parse every pair file; one UserError with every malformed record of every file."""
    return read_and_validate(sources, parse=parse_pair, what="preference pairs")


class PairDataset(Dataset):
    """Item i: pair i's chosen and rejected samples, and its reference log-probabilities once set.
    KTO (sft/kto.py) puts an example and its mismatched answer in a pair, with a ``desirable`` flag each."""

    def __init__(self, samples: TokenizedSamples, pairs: list[tuple[int, int]], flags: list[bool] | None = None):
        self.samples, self.pairs, self.flags = samples, pairs, flags
        self.reference: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def set_reference(self, table: torch.Tensor) -> None:
        """(len, 2) log-probabilities of (chosen, rejected) under the starting model (engine/preference.py)."""
        self.reference = table

    def __getitem__(self, index: int) -> dict[str, Any]:
        rows = []
        for sample in self.pairs[index]:
            ids, labels = self.samples.get(sample)
            rows.append({"input_ids": torch.from_numpy(ids.astype(np.int64)),
                         "labels": torch.from_numpy(labels.astype(np.int64))})
        item: dict[str, Any] = {"rows": rows}
        if self.flags is not None:
            item["desirable"] = self.flags[index]
        if self.reference is not None:
            item["reference_logps"] = self.reference[index]
        return item

    def trainable_tokens(self) -> int:
        return int(sum((self.samples.get(s)[1] != IGNORE_INDEX).sum() for pair in self.pairs for s in pair))


@dataclass
class PairCollator:
    """Rows 2i and 2i+1 are pair i's chosen and rejected answers, right-padded to one width."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = SFTCollator(self.pad_token_id, self.pad_to_multiple_of)([row for item in items for row in item["rows"]])
        if "reference_logps" in items[0]:
            batch["reference_logps"] = torch.stack([item["reference_logps"] for item in items])
        if "desirable" in items[0]:
            batch["desirable"] = torch.tensor([item["desirable"] for item in items], dtype=torch.bool)
        return batch


def _pairs_of(part: TokenizedSamples, start: int, count: int) -> dict[int, tuple[int, int]]:
    """unit number → (its first sample, its second), for units whose two rows both survived truncation."""
    where = {int(flat): start + i for i, flat in enumerate(part.records)}
    return {u: (where[2 * u], where[2 * u + 1]) for u in range(count) if 2 * u in where and 2 * u + 1 in where}


Unit = tuple[int, Conversation, Conversation, "bool | None"]  # (record number, row 2i, row 2i+1, KTO's flag)


def _pair_units(records: list[tuple[Conversation, Conversation]]) -> list[Unit]:
    return [(number, chosen, rejected, None) for number, (chosen, rejected) in enumerate(records)]


def build_pair_datasets(data: SFTData, tokenizer: Any, spec: TemplateSpec, tok_fingerprint: str, order_seed: int,
                        validated: tuple[list[SourceFile], list], units_of=_pair_units, objective: str = "dpo",
                        rows: str | None = None) -> tuple[PairDataset, PairDataset | None, MixReport]:
    """(train pairs, eval pairs or None, report): the pair version of sft.mixture.build_datasets.
    ``units_of``: a file's parsed records → its units, each two rows after one prompt (KTO: sft/kto.py);
    ``rows`` names what those rows are in the tokenization cache's key (the same file gives other rows)."""
    from corpora.manifest import repeat_count

    from .cache import PAIR_ROWS, cached_tokenize

    rows = rows or PAIR_ROWS

    sources, parsed = validated
    report = MixReport()
    parts, cache_keys, file_units = [], [], []
    for source, (records, keys, held, excluded) in zip(sources, parsed):
        units = units_of(records)
        flat = [conv for unit in units for conv in unit[1:3]]
        samples, stats, key = cached_tokenize(source.path, flat, tokenizer, spec, data.max_seq_length, data.cache_dir,
                                              tok_fingerprint, pairs=True, rows=rows)
        parts.append(samples)
        file_units.append(units)
        cache_keys.append({"name": source.name, "cache_key": key, "weight": source.weight,
                           "holdout": [source.holdout_fraction, source.holdout_salt],
                           **({"excluded": sha256_json(sorted(k.hex() for k in source.exclude))} if source.exclude else {})})
        report.files[source.name] = {"path": str(source.path), "weight": source.weight, "records": len(records),
                                     **({"pairs": len(units)} if objective == "dpo" else {"examples": len(units)}),
                                     **asdict(stats), "held_out_records": int(sum(held)),
                                     "excluded_records": int(sum(excluded))}
    merged, starts = TokenizedSamples.concat(parts)
    train, evaluation = [], []
    for part, start, units, (_, keys, held, excluded), source in zip(parts, starts, file_units, parsed, sources):
        for u, pair in sorted(_pairs_of(part, start, len(units)).items()):
            record, flag = units[u][0], units[u][3]
            if excluded[record]:
                continue
            if held[record]:
                evaluation.append((pair, flag))
            else:
                train.extend([(pair, flag)] * repeat_count(source.weight, data.mix_seed, keys[record].hex()))
    if not train:
        raise UserError(f"no training {'pairs' if objective == 'dpo' else 'examples'} left (all files empty, weight 0, "
                        "held out, or an answer dropped by truncation)")
    random.Random(order_seed).shuffle(train)
    train_ds, eval_ds = (_dataset(merged, chosen, objective) for chosen in (train, evaluation))
    report.train_samples = report.train_rows = len(train)
    report.eval_samples = len(evaluation)
    report.train_trainable_tokens = train_ds.trainable_tokens()
    report.fingerprint = sha256_json({"files": cache_keys, "mix_seed": data.mix_seed, "order_seed": order_seed,
                                      "objective": objective, "max_seq_length": data.max_seq_length})
    return train_ds, (eval_ds if evaluation else None), report


def _dataset(samples: TokenizedSamples, units: list, objective: str) -> PairDataset:
    return PairDataset(samples, [pair for pair, _ in units], [flag for _, flag in units] if objective == "kto" else None)
