"""Examples for ``objective: kto``: answers marked desirable or undesirable on their own (engine/kto.py).

Accepted records (a JSON array or JSON Lines, like instruction files), each with its verdict, a JSON
boolean, as ``label`` (TRL) or ``kto_tag`` (LLaMA-Factory):

* ``{"prompt": "..." | [messages ending with the user's turn], "completion": "..." | assistant message, "label"}``
  (TRL's unpaired preference form);
* ``{"instruction", "input"?, "system"?, "history"?, "output", "kto_tag"}`` (LLaMA-Factory's Alpaca form);
* ``{"conversations"|"messages": [... ending with the assistant's answer], "kto_tag"|"label"}``;
* a preference pair ``{..., "chosen", "rejected"}`` (sft/pairs.py): its chosen answer desirable, its
  rejected one undesirable (TRL's ``unpair_preference_dataset``).

Each example gets a *mismatched* answer: another example's answer after this example's prompt, whose
log-probability under policy and reference estimates the KL term. The partner is fixed when the data
are built (a seeded cycle over the file's examples, skipping those with the same prompt or the same
answer; up to 63 of them, else the example is its own partner), so the
reference pass scores it once and a resumed run sees the same rows. Only the final answer (and its
EOS) is labelled, as for pairs; holdout, weights, exclude lists and the tokenization cache are the
instruction data's (a record's examples stay together).
"""
from __future__ import annotations

import random
from typing import Any

from .data import Conversation, RecordError, parse_record
from .mixture import SourceFile, read_and_validate
from .pairs import Unit, answer_field, parse_pair, prompt_of

_VERDICT_KEYS = ("label", "kto_tag")
ROWS = "an example, its mismatched answer (sft.kto.kto_units v2); last answer only"  # the cache key's name


def _verdict(record: dict) -> bool:
    present = [key for key in _VERDICT_KEYS if key in record]
    if len(present) != 1:
        raise RecordError("a KTO example needs its verdict as `label` or `kto_tag` (true: desirable, false: "
                          "undesirable)" + (", not both" if present else ""))
    value = record[present[0]]
    if not isinstance(value, bool):
        raise RecordError(f"`{present[0]}` must be true or false, got {value!r}")
    return value


def parse_example(record: Any) -> list[tuple[Conversation, bool]]:
    """One raw record → its examples: (conversation ending in the judged answer, desirable)."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    if "chosen" in record or "rejected" in record:
        chosen, rejected = parse_pair(record)
        return [(chosen, True), (rejected, False)]
    desirable = _verdict(record)
    context = {k: v for k, v in record.items() if k not in _VERDICT_KEYS}
    if "completion" in context:
        if "output" in context:
            raise RecordError("`output` next to `completion`: which answer is judged? (keep one)")
        completion = answer_field(context, "completion")
        context.pop("completion")
        return [(prompt_of(context, "the judged answer is `completion`").with_answer(completion), desirable)]
    return [(parse_record(context, need_answer=True), desirable)]


def read_examples(sources: list[SourceFile]) -> list:
    """Parse every file; one UserError with every malformed record of every file."""
    return read_and_validate(sources, parse=parse_example, what="KTO examples")


def kto_units(records: list[list[tuple[Conversation, bool]]]) -> list[Unit]:
    """A file's units: (record number, the example, its prompt with a mismatched answer, desirable)."""
    examples = [(number, conv, flag) for number, found in enumerate(records) for conv, flag in found]
    cycle = list(range(len(examples)))
    random.Random(len(examples)).shuffle(cycle)  # a fixed function of the file: cached rows stay right
    place = {index: at for at, index in enumerate(cycle)}
    units = []
    for index, (number, conv, flag) in enumerate(examples):
        later = (examples[cycle[(place[index] + step) % len(cycle)]][1] for step in range(1, min(len(cycle), 64)))
        partner = next((other for other in later if other.with_answer(None) != conv.with_answer(None)
                        and other.turns[-1].assistant != conv.turns[-1].assistant), conv)
        units.append((number, conv, conv.with_answer(partner.turns[-1].assistant), flag))
    return units
