"""An Ollama Go template for a base's own Jinja chat template (SFT's ``template: tokenizer``), read off
how the Jinja template renders.

    form, notes = infer_form(render, bos_text="<|begin_of_text|>", adds_bos=True)   # or raises Misfit
    go_text(form)        # the Modelfile's TEMPLATE
    render_form(form, messages)   # what Ollama renders with it (tests/ollama/render.go runs the Go side)

Translating Jinja is not safe in general, so nothing here parses it. The template is rendered on
prompts whose contents are marker words, and the text between the markers gives the literal pieces of
a *role-wrapper* form: fixed text before and after each message's content; the opening of a chat
without a system message (where a default system prompt sits: Qwen's "You are Qwen…", Llama-3.1's
date lines); the generation prompt; and the system prompt either in a block of its own (Llama-3,
ChatML) or folded into the first or the last user turn (Llama-2-chat, Mistral's v3 ``[INST]``).
Each reading is then rendered the way the Go template renders it, on prompts with and without a
system prompt and of one to three questions, and must reproduce the Jinja text exactly (less the
leading BOS, which Ollama's tokenizer adds itself when the model asks for one). Chats that end with
a reply are checked too; a template that renders the last reply apart (Qwen3's empty <think> block,
Mistral-Nemo dropping the system prompt) gets a note, since Ollama renders such chats only to
continue a reply. A template that no reading reproduces (one that raises on a system message, or
renders a question by its place in the chat) gets no Go template, and ``Misfit`` says why.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

Message = dict[str, str]
Render = Callable[[list[Message], bool], str]  # (messages, add_generation_prompt) -> the Jinja text

_SYSTEM, _USERS, _ANSWER = "zhllamasystemzh", ("zhllamaq1zh", "zhllamaq2zh"), "zhllamaa1zh"
# The chats a reading must reproduce: realistic contents (inner newlines, CJK and ASCII) without
# surrounding whitespace, which some templates trim and a Go template cannot (see trim_note).
_QUESTIONS = ("列出三种水果。", "Say hello.", "床前明月光\n续写下一句")
_ANSWERS_TEXT = ("苹果、香蕉、橙子。", "Hello! 你好！", "疑是地上霜。\n举头望明月。")
_SYSTEMS = (None, "", "你是一个乐于助人的助手。\nAnswer briefly.")


class Misfit(ValueError):
    """The chat template has no Go template of this form; the message says where it differs."""


@dataclasses.dataclass(frozen=True)
class ChatForm:
    first: str  # opens a chat whose first rendered message is a user's (default system prompt, no BOS)
    user_open: str  # before every later user message
    user_close: str
    assistant_open: str
    assistant_close: str
    generation: str  # after the last message when it is not an answer (the reply's opening)
    ending: str = ""  # after the last message when it is an answer (Phi-3's EOS)
    system_open: str = ""  # opens a chat that starts with a system block (no BOS)
    system_close: str = ""
    skip_empty_system: bool = False  # an empty system prompt renders as none (Phi-3)
    fold: str | None = None  # None: the system prompt is a block; "first"/"last": inside that user turn
    fold_before: str = ""  # around the system prompt inside the user turn
    fold_after: str = ""


def chat(system: str | None, questions: tuple[str, ...], answers: tuple[str, ...]) -> list[Message]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    for k, question in enumerate(questions):
        messages.append({"role": "user", "content": question})
        if k < len(answers):
            messages.append({"role": "assistant", "content": answers[k]})
    return messages


def _split(text: str, markers: tuple[str, ...], what: str) -> list[str]:
    """The text around ``markers``, which must each appear once and in order."""
    parts, rest = [], text
    for marker in markers:
        if text.count(marker) != 1 or marker not in rest:
            raise Misfit(f"{what}: a message's content is not rendered once, as written and in order")
        before, _, rest = rest.partition(marker)
        parts.append(before)
    return parts + [rest]


# Marker tokens ("<|eot_id|>", "<｜Assistant｜>", "[INST]", "</s>"): where two texts part inside one, they
# part before it, so the Go template shows whole tokens (any split renders the same text).
_MARKER = re.compile(r"<[|｜][^<>]*?[|｜]>|\[/?[A-Z_]+\]|</?s>")


def _shared_start(a: str, b: str) -> int:
    """The length of the common beginning of ``a`` and ``b``, not ending inside a marker token."""
    at = len(os.path.commonprefix([a, b]))
    for match in _MARKER.finditer(a):
        if match.start() < at < match.end():
            return match.start()
    return at


def _strip_bos(text: str, bos_text: str, adds_bos: bool) -> str:
    if not adds_bos:
        return text
    if not bos_text or not text.startswith(bos_text):
        raise Misfit("the model's tokenizer adds BOS but the chat template does not start with it: "
                     "Ollama would send two BOS or one the model was not trained with")
    return text[len(bos_text):]


def _rendered(render: Render, messages: list[Message], generation: bool) -> str:
    try:
        return render(messages, generation)
    except Exception as exc:  # a template's raise_exception, or a chat it cannot render
        roles = "/".join(m["role"] for m in messages)
        raise Misfit(f"the chat template fails on a {roles} chat: {exc}") from exc


def _shared_end(a: str, b: str) -> int:
    """The length of the common end of ``a`` and ``b``, not starting inside a marker token of ``a``."""
    at = len(a) - len(os.path.commonprefix([a[::-1], b[::-1]]))
    for match in _MARKER.finditer(a):
        if match.start() < at < match.end():
            return len(a) - match.end()
    return len(a) - at


def _readings(render: Render, bos_text: str, adds_bos: bool) -> list[ChatForm]:
    """Every form the marker chats admit (one per place the system prompt may sit). Prompts (chats
    awaiting a reply, what Ollama renders) give the pieces; a chat that ends with its reply gives the
    reply's closing text when it renders that reply as a prompt's history does."""
    (q1, q2), a1 = _USERS, _ANSWER
    prompt = _rendered(render, chat(None, (q1, q2), (a1,)), True)
    head, asked, between, after_question = _split(prompt, (q1, a1, q2), "a two-question prompt")
    first_prompt = _rendered(render, chat(None, (q1,), ()), True)
    first_head, after_first = _split(first_prompt, (q1,), "a question")
    if first_head != head or after_first != after_question:
        raise Misfit("turns are not rendered alike: the text around a question depends on its place in the chat")
    user_close = asked[:_shared_start(asked, after_question)]
    answered = _split(_rendered(render, chat(None, (q1,), (a1,)), False), (q1, a1), "an answered question")
    if answered[:2] == [head, asked]:
        assistant_close = between[:_shared_start(answered[2], between)]
        ending = answered[2][len(assistant_close):]
    else:  # the last reply renders unlike history (Qwen3's <think> block): the prompts' split is used
        assistant_close, ending = between[:len(between) - _shared_end(between, head)], ""
    base = dict(first=_strip_bos(head, bos_text, adds_bos), user_open=between[len(assistant_close):],
                user_close=user_close, assistant_open=asked[len(user_close):], assistant_close=assistant_close,
                generation=after_question[len(user_close):], ending=ending)
    base["skip_empty_system"] = _rendered(render, chat("", (q1,), ()), True) == first_prompt
    with_system = _rendered(render, chat(_SYSTEM, (q1, q2), (a1,)), True)
    readings = []
    if with_system.find(_SYSTEM) < with_system.find(q1):
        before, around, _ = _split(with_system, (_SYSTEM, q1), "a prompt with a system prompt")
        opening = _strip_bos(before, bos_text, adds_bos)
        if around.endswith(base["user_open"]):
            readings.append(ChatForm(**base, system_open=opening,
                                     system_close=around[:len(around) - len(base["user_open"])]))
        if opening.startswith(base["first"]):
            readings.append(ChatForm(**base, fold="first", fold_before=opening[len(base["first"]):],
                                     fold_after=around))
    else:
        _, after_answer, around, _ = _split(with_system, (a1, _SYSTEM, q2), "a prompt with a system prompt")
        if after_answer.startswith(between):
            readings.append(ChatForm(**base, fold="last", fold_before=after_answer[len(between):], fold_after=around))
    return readings


def infer_form(render: Render, bos_text: str, adds_bos: bool) -> tuple[ChatForm, list[str]]:
    """The form whose Go rendering reproduces ``render`` on every check prompt, and notes for the
    Modelfile (also where chats ending with a reply differ); raises Misfit (with the first difference)
    when there is none."""
    problem = "the system prompt sits neither in a block of its own nor in the first or last user turn"
    for form in _readings(render, bos_text, adds_bos):
        bos = bos_text if adds_bos else ""
        problem = _first_difference(form, render, bos, prompts=True)
        if problem is None:
            answered = _first_difference(form, render, bos, prompts=False)
            notes = [] if answered is None else [
                f"Chats that end with a reply render unlike the base's template ({answered}).",
                "Ollama renders such chats only to continue that reply; prompts render alike."]
            return form, notes + trim_note(render)
    raise Misfit(problem)


def check_chats() -> list[tuple[list[Message], bool]]:
    """The chats a form is checked on (with add_generation_prompt): no, an empty and a two-line system
    prompt; one to three turns; the last question awaiting its answer (a prompt), or answered."""
    chats = []
    for system in _SYSTEMS:
        for turns in (1, 2, 3):
            questions = _QUESTIONS[:turns]
            chats.append((chat(system, questions, _ANSWERS_TEXT[:turns]), False))
            chats.append((chat(system, questions, _ANSWERS_TEXT[:turns - 1]), True))
    return chats


def _first_difference(form: ChatForm, render: Render, bos: str, prompts: bool) -> str | None:
    for messages, generation in check_chats():
        if generation != prompts:
            continue
        want, got = _rendered(render, messages, generation), bos + render_form(form, messages)
        if want != got:
            at = len(os.path.commonprefix([want, got]))
            roles = "/".join(m["role"] for m in messages)
            return (f"on a {roles} chat the Go template would render {got[at:at + 40]!r} where the chat "
                    f"template renders {want[at:at + 40]!r} (after {want[max(0, at - 40):at]!r})")
    return None


def trim_note(render: Render) -> list[str]:
    """A note when the template trims messages' surrounding whitespace (Llama-3): Go templates cannot."""
    padded = " 两端有空格 \n"
    text = _rendered(render, chat(None, (padded,), ()), True)
    if padded in text:
        return []
    return ["The base's chat template trims the whitespace around each message; Ollama's Go templates",
            "cannot, so a message sent with leading or trailing whitespace keeps it."]


# ---------------------------------------------------------------- rendering, as Ollama + Go do it

def ollama_data(messages: list[Message]) -> tuple[str, list[Message]]:
    """What Ollama hands a template: .System (every system message, joined by a blank line) and
    .Messages with consecutive messages of one role merged (Ollama's template/template.go)."""
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + message["content"]}
        else:
            merged.append(dict(message))
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return system, merged


def render_form(form: ChatForm, messages: list[Message]) -> str:
    """The text the Go template of ``form`` renders for ``messages`` (the same steps, in Python)."""
    system, merged = ollama_data(messages)
    users = [i for i, m in enumerate(merged) if m["role"] == "user"]
    target = (users[0] if form.fold == "first" else users[-1]) if users else -1
    has_system = any(m["role"] == "system" for m in merged)
    out, started, last = [], False, ""
    for i, message in enumerate(merged):
        role, content = message["role"], message["content"]
        if role == "system":
            if form.fold is None and not started and not (form.skip_empty_system and not content):
                out += [form.system_open, content, form.system_close]
                started = True
        elif role == "user":
            out.append(form.user_open if started else form.first)
            if form.fold and has_system and i == target:
                out += [form.fold_before, system, form.fold_after]
            out += [content, form.user_close]
            started = True
        elif role == "assistant":
            out += [form.assistant_open, content, form.assistant_close]
            started = True
        last = role
    out.append(form.generation if last != "assistant" else form.ending)
    return "".join(out)


def _lit(text: str) -> str:
    """Literal text in a Go template: only "{{" would start an action."""
    return text.replace("{{", '{{ "{{" }}')


def _either(condition: str, yes: str, no: str) -> str:
    """``yes`` if the Go ``condition`` holds, else ``no``, without the branches that print nothing."""
    if yes == no:
        return _lit(yes)
    if not yes:
        return f"{{{{ if not ({condition}) }}}}{_lit(no)}{{{{ end }}}}"
    otherwise = f"{{{{ else }}}}{_lit(no)}" if no else ""
    return f"{{{{ if {condition} }}}}{_lit(yes)}{otherwise}{{{{ end }}}}"


def go_text(form: ChatForm) -> str:
    """The Go text/template that renders as ``render_form``. No trim markers ("{{-"): they would eat
    whitespace that belongs to the literal pieces (ChatML's newlines)."""
    parts = ['{{ $started := false }}{{ $last := "" }}']
    if form.fold:
        pick = "{{ $target = $i }}" if form.fold == "last" else "{{ if lt $target 0 }}{{ $target = $i }}{{ end }}"
        parts.append('{{ $target := -1 }}{{ $hasSystem := false }}{{ range $i, $m := .Messages }}'
                     '{{ if eq .Role "system" }}{{ $hasSystem = true }}{{ else if eq .Role "user" }}'
                     f"{pick}{{{{ end }}}}{{{{ end }}}}")
    parts.append('{{ range $i, $m := .Messages }}{{ if eq .Role "system" }}')
    if form.fold is None:
        block = f"{_lit(form.system_open)}{{{{ .Content }}}}{_lit(form.system_close)}{{{{ $started = true }}}}"
        if form.skip_empty_system:
            block = f"{{{{ if .Content }}}}{block}{{{{ end }}}}"
        parts.append(f"{{{{ if not $started }}}}{block}{{{{ end }}}}")
    parts.append(f'{{{{ else if eq .Role "user" }}}}{_either("$started", form.user_open, form.first)}')
    if form.fold:
        parts.append(f"{{{{ if and $hasSystem (eq $i $target) }}}}{_lit(form.fold_before)}{{{{ $.System }}}}"
                     f"{_lit(form.fold_after)}{{{{ end }}}}")
    parts.append(f"{{{{ .Content }}}}{_lit(form.user_close)}{{{{ $started = true }}}}"
                 f'{{{{ else if eq .Role "assistant" }}}}{_lit(form.assistant_open)}{{{{ .Content }}}}'
                 f"{_lit(form.assistant_close)}{{{{ $started = true }}}}{{{{ end }}}}{{{{ $last = .Role }}}}{{{{ end }}}}"
                 + _either('ne $last "assistant"', form.generation, form.ending))
    return "".join(parts)
