"""Jinja chat templates of the named SFT templates, written into exported tokenizer folders.

    from sft.chat_templates import jinja_template, install_chat_template
    install_chat_template("outputs/zh_sft_merged", spec)   # tokenizer_config.json gets "chat_template"

llama.cpp (GGUF ``tokenizer.chat_template``), vLLM, Ollama and ``apply_chat_template`` format a
conversation with the folder's Jinja template and tokenize the text in one go. Our SFT encoding
tokenizes the prompt and each answer on their own and adds BOS/EOS as ids (see templates.py). The
template below renders the text whose one-go ids are exactly those: the prompt (without a trailing
space), a space and the answer, then ``eos_token``; special tokens split the text, and every piece
after one gets its own "▁" (tokenizer.json's normalizer, llama.cpp's space prefix after a special
token), as each separately tokenized piece does. A test renders conversations with transformers
and compares the ids with ``encode_conversation``.

Limits of a text template: Alpaca's "### Input:" variant cannot be told apart in chat messages
(the input is part of the user message), so the template renders the no-input prompt.
"""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from zhllama.errors import UserError

from .templates import ALPACA_PREAMBLE, BOS_EVERY_TURN, CHINESE_ALPACA_2_SYSTEM, TemplateSpec

CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _lit(text: str) -> str:
    """A Jinja string literal (Jinja and llama.cpp's Jinja engine read JSON-style escapes)."""
    return json.dumps(text, ensure_ascii=False)


class Slot(enum.Enum):
    """A place in a prompt that a conversation fills (its value is the Jinja variable's name)."""
    SYSTEM = "system"
    CONTENT = "content"


# (first turn's prompt, later turns' prompt) as text and slots: they mirror templates.prompt_text with
# the trailing space removed. Both the Jinja template and Ollama's Go template (sft/ollama.py) are
# written from these, so the two cannot drift apart.
PROMPT_PIECES: dict[str, tuple[tuple[str | Slot, ...], tuple[str | Slot, ...]]] = {
    "alpaca": ((Slot.SYSTEM, "\n\n### Instruction:\n", Slot.CONTENT, "\n\n### Response:"),
               ("### Instruction:\n", Slot.CONTENT, "\n\n### Response:")),
    "chinese-alpaca-2": (("[INST] <<SYS>>\n", Slot.SYSTEM, "\n<</SYS>>\n\n", Slot.CONTENT, " [/INST]"),
                         ("[INST] ", Slot.CONTENT, " [/INST]")),
}
PROMPT_PIECES["chinese-alpaca"] = PROMPT_PIECES["alpaca"]
DEFAULT_SYSTEM = {"alpaca": ALPACA_PREAMBLE, "chinese-alpaca": ALPACA_PREAMBLE,
                  "chinese-alpaca-2": CHINESE_ALPACA_2_SYSTEM}


def system_prompt(spec: TemplateSpec) -> str:
    """The system prompt a conversation without its own gets."""
    return spec.system_prompt if spec.system_prompt is not None else DEFAULT_SYSTEM[spec.name]


def _jinja(pieces: tuple[str | Slot, ...]) -> str:
    return " + ".join(piece.value if isinstance(piece, Slot) else _lit(piece) for piece in pieces)


def jinja_template(spec: TemplateSpec) -> str:
    """The Jinja chat template of ``spec`` (a ``tokenizer`` spec already carries its own)."""
    if spec.name == "tokenizer":
        if not spec.chat_template:
            raise UserError("template 'tokenizer' without a chat_template")
        return spec.chat_template
    if spec.name not in PROMPT_PIECES:
        raise UserError(f"template {spec.name!r} has no chat template")
    first, later = (_jinja(pieces) for pieces in PROMPT_PIECES[spec.name])
    later_bos = "(bos_token or '') + " if spec.name in BOS_EVERY_TURN else ""
    return (
        "{%- set ns = namespace(turn=0, system=" + _lit(system_prompt(spec)) + ") -%}"
        "{%- for message in messages -%}"
        "{%- set content = message['content'] -%}"
        "{%- if message['role'] == 'system' -%}{%- set ns.system = content -%}"
        "{%- elif message['role'] == 'user' -%}"
        "{%- set system = ns.system -%}"
        "{%- if ns.turn == 0 -%}{{ (bos_token or '') + " + first + " }}"
        "{%- else -%}{{ " + later_bos + later + " }}{%- endif -%}"
        "{%- set ns.turn = ns.turn + 1 -%}"
        "{%- elif message['role'] == 'assistant' -%}{{ ' ' + content + (eos_token or '') }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def install_chat_template(folder: str | Path, spec: TemplateSpec) -> str:
    """Set ``chat_template`` in ``folder``'s tokenizer_config.json (and chat_template.jinja, when the
    folder has one: transformers 5 prefers that file). Other keys stay as they were, so the
    tokenizer's fingerprint (which ignores chat templates) does not change."""
    return set_chat_template(folder, jinja_template(spec))


def set_chat_template(folder: str | Path, template: str) -> str:
    """``install_chat_template`` for a Jinja template given as text (another model's own)."""
    folder = Path(folder)
    path = folder / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["chat_template"] = template
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        (folder / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    return template
