"""Instruction records: read Alpaca / conversation files, validate, normalise to ``Conversation``.

Accepted record shapes (one JSON object per record; a file is a JSON array or JSON Lines, detected
from its first character, so BELLE's ``eval_set.json`` — JSON Lines under a ``.json`` name — works):

* Alpaca: ``{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}``
  (Stanford Alpaca, Chinese-Alpaca, LLaMA-Factory's ``history``).
* Conversations: ``{"conversations": [{"from": "human"|"gpt"|..., "value": ...}, ...], "system"?}``
  (BELLE multi-turn, ShareGPT) or ``{"messages": [{"role": "user"|"assistant", "content": ...}]}``.
* Prompts for generation only (no answer needed): BELLE eval ``{"question", "std_answer"?, "class"?}``
  or an Alpaca record without ``output``.

Every malformed record is reported with its file and record number (and line for JSON Lines), all
of them at once, before any training starts.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from zhllama.errors import UserError, raise_if_problems
from zhllama.files import describe_not_a_file

_MAX_REPORTED = 20  # enough to see the pattern; a file with 10k bad records should not flood
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "chatgpt", "model"}


@dataclass(frozen=True)
class Turn:
    """One exchange. ``input`` is Alpaca's optional context (kept apart: templates place it)."""

    user: str
    assistant: str | None  # None only for the final turn of a generation prompt
    input: str = ""


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    system: str | None = None  # None: the template's default system prompt

    def with_answer(self, answer: str | None) -> "Conversation":
        """The same conversation with its last turn's answer replaced (None: the prompt awaiting one)."""
        last = self.turns[-1]
        return Conversation(self.turns[:-1] + (Turn(last.user, answer, last.input),), self.system)


@dataclass
class PromptItem:
    """A generation request: the conversation up to the turn to answer, plus what to report."""

    conversation: Conversation
    reference: str | None = None
    category: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


class RecordError(ValueError):
    """A malformed record; the caller adds the file and record number."""


def iter_json_records(path: str | Path) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(record_number, where, obj)``; ``where`` reads "record N" or "line L (record N)".

    Invalid JSON raises UserError naming the file and line at once: nothing after a broken line
    of a JSON array can be trusted, and for JSON Lines we still report it before training.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: instruction data file {describe_not_a_file(path)}")
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip()[:1] == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}") from None
        for number, obj in enumerate(records, start=1):
            yield number, f"record {number}", obj
        return
    if text.lstrip()[:1] == "{" and "\n" in text.strip():
        try:  # one JSON object spread over lines, e.g. {"data": [...]}: not a record file
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            raise UserError(f"{path}: one JSON object (keys: {', '.join(list(whole)[:5])}); expected a JSON array "
                            "of records or JSON Lines (one record per line)")
    problems = []
    number = 0
    parsed: list[tuple[int, str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        number += 1
        where = f"line {lineno} (record {number})"
        try:
            parsed.append((number, where, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: {where}: not valid JSON: {exc.msg} at column {exc.colno}")
    raise_if_problems(f"{path}: malformed JSON Lines", problems, limit=_MAX_REPORTED)
    yield from parsed


def _text(record: dict, key: str, required: bool) -> str | None:
    if key not in record or record[key] is None:
        if required:
            raise RecordError(f"missing `{key}`")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"`{key}` must be a string, got {type(value).__name__}")
    return value


def _history(record: dict) -> list[Turn]:
    history = record.get("history")
    if history is None:
        return []
    if not isinstance(history, list):
        raise RecordError(f"`history` must be a list of [user, assistant] pairs, got {type(history).__name__}")
    turns = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(f"`history[{i}]` must be a [user, assistant] pair of strings")
        turns.append(Turn(user=pair[0], assistant=pair[1]))
    return turns


def _messages(record: dict, key: str, need_answer: bool) -> Conversation:
    items = record[key]
    if not isinstance(items, list) or not items:
        raise RecordError(f"`{key}` must be a non-empty list of messages")
    system = _text(record, "system", required=False)
    roles: list[tuple[str, str]] = []
    for i, msg in enumerate(items):
        if not isinstance(msg, dict):
            raise RecordError(f"`{key}[{i}]` must be an object, got {type(msg).__name__}")
        role = msg.get("from", msg.get("role"))
        value = msg.get("value", msg.get("content"))
        if not isinstance(role, str):
            raise RecordError(f"`{key}[{i}]` needs a `from` (or `role`) string")
        if not isinstance(value, str):
            raise RecordError(f"`{key}[{i}]` needs a `value` (or `content`) string")
        role = role.lower()
        if role == "system":
            if i != 0:
                raise RecordError(f"`{key}[{i}]`: a system message may only come first")
            system = value
            continue
        if role in USER_ROLES:
            roles.append(("user", value))
        elif role in ASSISTANT_ROLES:
            roles.append(("assistant", value))
        else:
            raise RecordError(f"`{key}[{i}]`: unknown role {role!r} (expected human/user, gpt/assistant, system)")
    turns = []
    for j in range(0, len(roles), 2):
        user = roles[j]
        answer = roles[j + 1] if j + 1 < len(roles) else None
        if user[0] != "user" or (answer is not None and answer[0] != "assistant"):
            raise RecordError(f"`{key}`: turns must alternate user, assistant (starting with the user)")
        turns.append(Turn(user=user[1], assistant=answer[1] if answer else None))
    if need_answer and turns[-1].assistant is None:
        raise RecordError(f"`{key}` must end with an assistant message to train on")
    return Conversation(turns=tuple(turns), system=system)


def parse_record(record: Any, need_answer: bool = True) -> Conversation:
    """One raw record → Conversation. Raises RecordError describing what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("conversations", "messages"):
        if key in record:
            return _messages(record, key, need_answer)
    if "question" in record and "instruction" not in record:  # BELLE eval set
        return Conversation(turns=(Turn(user=_text(record, "question", True), assistant=None),))
    if "instruction" not in record:
        raise RecordError("missing `instruction` (or `conversations`/`messages`)")
    instruction = _text(record, "instruction", True)
    input_ = _text(record, "input", False) or ""
    output = _text(record, "output", need_answer)
    system = _text(record, "system", False)
    turns = _history(record) + [Turn(user=instruction, assistant=output if need_answer else None, input=input_)]
    return Conversation(turns=tuple(turns), system=system)


def parse_file(path: str | Path, need_answer: bool = True, parse: Callable[[Any], Any] | None = None
               ) -> tuple[list[tuple[Any, Any]], list[str]]:
    """(conversation, raw record) for every well-formed record, and one problem line per malformed one.
    ``parse``: another record reader raising RecordError (e.g. sft.pairs.parse_pair)."""
    parsed, problems = [], []
    for _, where, obj in iter_json_records(path):
        try:
            parsed.append((parse(obj) if parse else parse_record(obj, need_answer=need_answer), obj))
        except RecordError as exc:
            problems.append(f"{path}: {where}: {exc}")
    return parsed, problems


def raise_record_problems(title: str, problems: list[str]) -> None:
    """One UserError listing malformed records (the first ``_MAX_REPORTED`` and how many more)."""
    raise_if_problems(title, problems, limit=_MAX_REPORTED)


def load_conversations(path: str | Path) -> list[Conversation]:
    """Every training record of a file, or one UserError listing every malformed record."""
    parsed, problems = parse_file(path, need_answer=True)
    raise_record_problems(f"{path}: malformed instruction records", problems)
    conversations = [conv for conv, _ in parsed]
    warn_empty_instructions(path, conversations)
    return conversations


def warn_empty_instructions(path: str | Path, conversations: list[Conversation]) -> list[int]:
    """Record numbers whose user turn is empty (instruction and input): legal, but usually a broken export."""
    empty = [i for i, conv in enumerate(conversations, start=1)
             if any(not (t.user.strip() or (t.input or "").strip()) for t in conv.turns)]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        print(f"warning: {path}: {len(empty)} of {len(conversations)} records have an empty instruction and input "
              f"(records {shown}); the model learns to answer nothing in particular", file=sys.stderr)
    return empty


def load_prompts(path: str | Path) -> list[PromptItem]:
    """Generation requests. The reference is the record's answer (``std_answer``, ``output`` or
    ``label``, or the final assistant message of a conversation, then removed from the prompt)."""
    parsed, problems = parse_file(path, need_answer=False)
    items = []
    for conv, obj in parsed:
        reference = next((obj[k] for k in ("std_answer", "output", "label") if k in obj), None)
        last = conv.turns[-1]
        if last.assistant is not None:  # a finished conversation: answer its last user turn again
            reference = last.assistant
            conv = conv.with_answer(None)
        reference = reference if isinstance(reference, str) and reference.strip() else None
        # per-class scores: BELLE's class; for classification data (a `label`), the gold label
        category = obj.get("class", obj.get("category", obj.get("label")))
        items.append(PromptItem(conv, reference, category if isinstance(category, str) else None, obj))
    raise_record_problems(f"{path}: malformed instruction records", problems)
    return items
