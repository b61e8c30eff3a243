"""Ollama Modelfiles for the GGUFs that ``sft export --gguf`` writes.

    python -m sft export --base PT --adapter RUN --out DIR --gguf f16   # DIR/model-f16.gguf + DIR/Modelfile
    ollama create zh-alpaca -f DIR/Modelfile [--quantize q4_K_M]

Ollama does not run a GGUF's Jinja chat template. It formats a chat with a Go text/template taken
from the Modelfile or, when there is none, with one of its own whose Jinja text is within 100 edits
of the GGUF's (Llama 3, ChatML, …); failing that, the model gets the bare text. For the Alpaca and
Chinese-Alpaca-2 prompts it has none. The TEMPLATE written here comes from the same
pieces as the Jinja one (chat_templates.PROMPT_PIECES); for ``template: tokenizer`` (the base's own
Jinja template) it is read off how that template renders (sft/ollama_form.py), or left out with the
reason. Given what Ollama hands a template
(``.System``: the chat's system messages, else the Modelfile's SYSTEM; ``.Messages``), it renders
the Jinja template's text without its leading BOS text: Ollama's tokenizer adds BOS itself.
tests/test_ollama_modelfile.py runs it with Go's text/template and tokenizes the result with
llama.cpp: the ids SFT trained on.
"""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

from zhllama.errors import UserError

from .chat_templates import PROMPT_PIECES, Slot, system_prompt
from .templates import BOS_EVERY_TURN, TEMPLATE_FILE, TemplateSpec, stop_ids

MODELFILE = "Modelfile"
MAX_NUM_CTX = 8192  # Ollama allocates the KV cache for num_ctx tokens: a 128k-token model would not load
_GO_SLOTS = {Slot.SYSTEM: "{{ $.System }}", Slot.CONTENT: "{{ .Content }}"}


def go_template(spec: TemplateSpec, bos_token: str, eos_token: str) -> str:
    """The Ollama TEMPLATE of a named template: the first user turn with the system prompt, later
    turns without it (after BOS text for Llama-2-chat), each answer as " " + answer + EOS text."""
    if spec.name not in PROMPT_PIECES:
        raise UserError(f"template {spec.name!r} has no Ollama template of ours")
    first, later = ("".join(_GO_SLOTS.get(piece, piece) for piece in pieces) for pieces in PROMPT_PIECES[spec.name])
    if spec.name in BOS_EVERY_TURN:
        later = bos_token + later
    return ('{{- $turn := 0 }}{{ range .Messages }}{{ if eq .Role "user" }}'
            "{{ if eq $turn 0 }}" + first + "{{ else }}" + later + "{{ end }}{{ $turn = 1 }}"
            '{{ else if eq .Role "assistant" }} {{ .Content }}' + eos_token + "{{ end }}{{ end }}")


def _next_turn_marker(spec: TemplateSpec) -> str:
    """The text a later user turn starts with ("### Instruction:", "[INST]"): a model that goes on
    past its answer writes it, so Ollama stops there."""
    return next(piece for piece in PROMPT_PIECES[spec.name][1] if isinstance(piece, str)).strip()


def _check_value(what: str, text: str) -> None:
    """Ollama's Modelfile parser ends a value at the first \"\"\" and keeps only printable characters
    (Go's strconv.IsPrint) and whitespace: refuse what it would cut or drop, rather than write a
    Modelfile whose model gets another prompt than the one it was trained on."""
    if '"""' in text:
        raise UserError(f'{what} holds """, which ends a Modelfile value: Ollama would cut it there')
    for char in text:
        if char not in " \t\r\n" and unicodedata.category(char)[0] not in "LMNPS":
            raise UserError(f"{what} holds {char!r} (U+{ord(char):04X}, Unicode category "
                            f"{unicodedata.category(char)}), which Ollama's Modelfile parser drops")


def _context_length(folder: Path) -> int | None:
    from zhllama.rope import text_config

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    value = text_config(config).get("max_position_embeddings")
    return int(value) if value else None


def _own_template_lines(spec: TemplateSpec, tokenizer: Any) -> list[str]:
    """``template: tokenizer``: a Go template read off the base's Jinja one (sft/ollama_form.py), or,
    where none reproduces it, what to do instead; either way, stops at the token that closes a reply."""
    from .ollama_form import Misfit, go_text, infer_form
    from .templates import render_messages

    stops = [f'PARAMETER stop "{tokenizer.convert_ids_to_tokens(i)}"'
             for i in stop_ids(tokenizer, spec) if i != tokenizer.eos_token_id]
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    try:
        form, notes = infer_form(lambda messages, generation: render_messages(tokenizer, spec, messages, generation),
                                 tokenizer.bos_token or "", adds_bos)
    except Misfit as exc:
        return ["# No TEMPLATE: the base's chat template has no Go template of the forms zhllama writes",
                f"# ({exc}).",
                "# Ollama then uses the template it knows whose Jinja text is within 100 edits of the GGUF's.",
                "# Check `ollama show NAME --template`: if it says {{ .Prompt }}, none matched; copy the",
                "# TEMPLATE of the base's Ollama model (`ollama show llama3.1 --modelfile`) here.", *stops]
    template = go_text(form)
    _check_value("the chat template", template)
    return [*(f"# {line}" for line in notes), f'TEMPLATE """{template}"""', *stops]


def _chat_lines(spec: TemplateSpec, tokenizer: Any) -> list[str]:
    if spec.name == "tokenizer":
        return _own_template_lines(spec, tokenizer)
    template = go_template(spec, tokenizer.bos_token or "", tokenizer.eos_token or "")
    system = system_prompt(spec)
    _check_value("the system prompt", system)
    _check_value("the chat template", template)
    return [f'TEMPLATE """{template}"""', f'SYSTEM """{system}"""', f'PARAMETER stop "{_next_turn_marker(spec)}"']


def modelfile_text(folder: str | Path, gguf: str) -> str:
    """The Modelfile for ``folder``'s GGUF at path ``gguf`` (relative to the folder): FROM, the chat template and
    system prompt of the folder's sft_template.json (none: a base model, prompts go in as written),
    stops, and num_ctx = the model's context (at most MAX_NUM_CTX)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    lines = [f"# Ollama: ollama create NAME -f {MODELFILE}   (written by zhllama: python -m sft export or modelfile)",
             f"FROM {gguf if gguf.startswith(('.', '/')) else './' + gguf}"]
    if (folder / TEMPLATE_FILE).is_file():
        spec = TemplateSpec.load(folder)
        lines += _chat_lines(spec, AutoTokenizer.from_pretrained(str(folder)))
    else:
        lines.append("# A base model (no sft_template.json): Ollama sends each prompt as it is written.")
    context = _context_length(folder)
    if context:
        lines.append(f"PARAMETER num_ctx {min(context, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n"


def write_modelfile(folder: str | Path, text: str) -> Path:
    """Write ``text`` as ``folder``/Modelfile (whole or not at all)."""
    path = Path(folder) / MODELFILE
    partial = path.with_name(f".{MODELFILE}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path
