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
are built (a seeded cycle over the file's examples, skipping one with the same prompt), so the
reference pass scores it once and a resumed run sees the same rows. Only the final answer (and its
EOS) is labelled, as for pairs; holdout, weights, exclude lists and the tokenization cache are the
instruction data's (a record's examples stay together).
"""
from __future__ import annotations

import random
from typing import Any

from .data import Conversation, RecordError, Turn, parse_record
from .mixture import SourceFile, read_and_validate
from .pairs import Unit, _answer, parse_pair

_VERDICT_KEYS = ("label", "kto_tag")


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
        completion = _answer(context, "completion")
        context.pop("completion")
        prompt = context.pop("prompt", None)
        if prompt is not None:
            context["messages" if isinstance(prompt, list) else "instruction"] = prompt
        conv = parse_record(context, need_answer=False)
        *done, last = conv.turns
        if last.assistant is not None:
            raise RecordError("the prompt must end with the user's turn (the judged answer is `completion`)")
        return [(Conversation(tuple(done) + (Turn(last.user, completion, last.input),), conv.system), desirable)]
    return [(parse_record(context, need_answer=True), desirable)]


def read_examples(sources: list[SourceFile]) -> list:
    """Parse every file; one UserError with every malformed record of every file."""
    return read_and_validate(sources, parse=parse_example, what="KTO examples")


def _prompt(conv: Conversation) -> tuple:
    *done, last = conv.turns
    return tuple(done), last.user, last.input, conv.system


def kto_units(records: list[list[tuple[Conversation, bool]]]) -> list[Unit]:
    """A file's units: (record number, the example, its prompt with a mismatched answer, desirable)."""
    examples = [(number, conv, flag) for number, found in enumerate(records) for conv, flag in found]
    cycle = list(range(len(examples)))
    random.Random(len(examples)).shuffle(cycle)  # a fixed function of the file: cached rows stay right
    following = {index: [cycle[(at + step) % len(cycle)] for step in range(1, min(len(cycle), 4))]
                 for at, index in enumerate(cycle)}
    units = []
    for index, (number, conv, flag) in enumerate(examples):
        partner = next((examples[other][1] for other in following[index]
                        if _prompt(examples[other][1]) != _prompt(conv)), conv)
        *done, last = conv.turns
        mismatched = Conversation(tuple(done) + (Turn(last.user, partner.turns[-1].assistant, last.input),), conv.system)
        units.append((number, conv, mismatched, flag))
    return units
