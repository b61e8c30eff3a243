"""Prompt templates by name, and the token/label encoding every SFT command shares.

Templates (``TEMPLATE_NAMES``):

* ``alpaca`` — the Stanford Alpaca prompt, verbatim, with its two variants (with/without ``input``).
* ``chinese-alpaca`` — Chinese-Alpaca (v1)'s variant: the no-input Stanford prompt for every
  record, the input appended to the instruction after a newline, ``"### Response: "`` with a
  trailing space (scripts/training/build_dataset.py of Chinese-LLaMA-Alpaca).
* ``chinese-alpaca-2`` — Llama-2-chat ``[INST] <<SYS>>\\n…\\n<</SYS>>\\n\\n… [/INST]`` with
  Chinese-Alpaca-2's system prompt "You are a helpful assistant. 你是一个乐于助人的助手。"; later
  turns are ``<s>[INST] … [/INST]`` after the previous answer's ``</s>`` (as Llama-2-chat).
* ``tokenizer`` — the tokenizer's own ``chat_template`` (Jinja), when it has one.

Encoding, as Chinese-Alpaca(-2) did: the prompt (without a trailing space, see ``prompt_piece``)
and each response are tokenized as separate pieces (``add_special_tokens=False``, special-token
text kept as text), BOS/EOS are added as ids, so a prompt encodes to the same ids at training and
at generation time — and, with the folder's sentencepiece normalisation, to the ids of the text
the Jinja chat template renders (chat_templates.py). Labels are -100 on BOS, system, prompt and user tokens;
response tokens and the EOS after every response are trained. For ``tokenizer`` templates the
whole rendered text is tokenized once and assistant spans are found by character offsets (the
template decides how a turn ends; ``_answer_span`` also finds them in templates that render a turn
by what follows it, such as Qwen3's).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from zhllama.errors import UserError

from .data import Conversation, Turn

IGNORE_INDEX = -100
TEMPLATE_FILE = "sft_template.json"

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
CHINESE_ALPACA_2_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"
TEMPLATE_NAMES = ("alpaca", "chinese-alpaca", "chinese-alpaca-2", "tokenizer")


@dataclass(frozen=True)
class TemplateSpec:
    """What is saved with a model (``sft_template.json``) so generation formats prompts the same way."""

    name: str
    system_prompt: str | None = None  # None: the template's default
    chat_template: str | None = None  # the Jinja text, for name == "tokenizer"

    def save(self, folder: str | Path) -> None:
        path = Path(folder) / TEMPLATE_FILE
        path.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def load(folder: str | Path) -> "TemplateSpec":
        path = Path(folder) / TEMPLATE_FILE
        if not path.is_file():
            raise UserError(
                f"{folder}: no {TEMPLATE_FILE}; this folder was not written by `sft train`/`sft export`. "
                f"Pass --template NAME ({', '.join(TEMPLATE_NAMES)}) to say how prompts are formatted")
        data = json.loads(path.read_text(encoding="utf-8"))
        return TemplateSpec(**data)


def make_spec(name: str, tokenizer: Any, system_prompt: str | None = None) -> TemplateSpec:
    if name not in TEMPLATE_NAMES:
        raise UserError(f"unknown template {name!r} (known: {', '.join(TEMPLATE_NAMES)})")
    chat_template = None
    if name == "tokenizer":
        chat_template = getattr(tokenizer, "chat_template", None)
        if not chat_template:
            raise UserError("template 'tokenizer' needs a tokenizer with a chat_template; this one has none "
                            "(use 'alpaca' or 'chinese-alpaca-2')")
    return TemplateSpec(name=name, system_prompt=system_prompt, chat_template=chat_template)


# ---------------------------------------------------------------- prompt texts of the named templates
def _join_input(turn: Turn) -> str:
    return turn.user + "\n" + turn.input if turn.input else turn.user


def prompt_text(spec: TemplateSpec, index: int, turn: Turn, system: str | None) -> str:
    """The text before answer number ``index`` (0-based) of a conversation."""
    if spec.name == "alpaca":
        body = f"### Instruction:\n{turn.user}\n\n"
        if turn.input:
            body += f"### Input:\n{turn.input}\n\n"
        body += "### Response:"
        if index > 0:
            return body
        preamble = system if system is not None else (ALPACA_PREAMBLE_WITH_INPUT if turn.input else ALPACA_PREAMBLE)
        return f"{preamble}\n\n{body}"
    if spec.name == "chinese-alpaca":
        body = f"### Instruction:\n{_join_input(turn)}\n\n### Response: "
        if index > 0:
            return body
        return f"{system if system is not None else ALPACA_PREAMBLE}\n\n{body}"
    if spec.name == "chinese-alpaca-2":
        if index > 0:
            return f"[INST] {_join_input(turn)} [/INST]"
        system = system if system is not None else CHINESE_ALPACA_2_SYSTEM
        return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{_join_input(turn)} [/INST]"
    raise UserError(f"template {spec.name!r} has no fixed prompt text")


def prompt_piece(spec: TemplateSpec, index: int, turn: Turn, system: str | None) -> str:
    """The prompt text as it is tokenized: without a trailing space. chinese-alpaca's
    "### Response: " space is the answer's first character instead — the answer, tokenized on its
    own, starts with "▁" — so the trained ids are the ids of the text prompt + " " + answer in one
    piece (what llama.cpp and vLLM get from the chat template), and a prompt ends where it does at
    training time."""
    return prompt_text(spec, index, turn, system).rstrip(" ")


BOS_EVERY_TURN = {"chinese-alpaca-2"}  # Llama-2-chat: <s>[INST] … [/INST] answer </s><s>[INST] …


def _bos_every_turn(spec: TemplateSpec) -> bool:
    return spec.name in BOS_EVERY_TURN


def _system(spec: TemplateSpec, conv: Conversation) -> str | None:
    return conv.system if conv.system is not None else spec.system_prompt


def _piece(tokenizer: Any, text: str) -> list[int]:
    # Special-token text inside a record ("</s>" in an answer) stays text, as sentencepiece and
    # llama.cpp read plain text; the template's BOS/EOS are added as ids.
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _special_ids(tokenizer: Any) -> tuple[int | None, int]:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; SFT appends EOS after every response")
    return tokenizer.bos_token_id, tokenizer.eos_token_id


# ---------------------------------------------------------------- encoding
def _plan(conv: Conversation, spec: TemplateSpec, bos: int | None, eos: int) -> list[tuple[str | int, bool]]:
    """The conversation as pieces: a str is tokenized on its own, an int is a special token id;
    the bool says whether the piece is trained (responses and their EOS)."""
    system = _system(spec, conv)
    pieces: list[tuple[str | int, bool]] = []
    for index, turn in enumerate(conv.turns):
        if turn.assistant is None:
            raise ValueError("encode_conversation needs every turn answered; use encode_prompt")
        if bos is not None and (index == 0 or _bos_every_turn(spec)):
            pieces.append((bos, False))
        pieces += [(prompt_piece(spec, index, turn, system), False), (turn.assistant, True), (eos, True)]
    return pieces


def _assemble(pieces: list[tuple[str | int, bool]], token_ids: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for piece, trained in pieces:
        part = [piece] if isinstance(piece, int) else token_ids[piece]
        ids += part
        labels += part if trained else [IGNORE_INDEX] * len(part)
    return ids, labels


def encode_conversation(conv: Conversation, tokenizer: Any, spec: TemplateSpec) -> tuple[list[int], list[int]]:
    """Token ids and labels of a complete conversation (every turn answered)."""
    if spec.name == "tokenizer":
        return _encode_chat_template(conv, tokenizer, spec, generation=False)[:2]
    pieces = _plan(conv, spec, *_special_ids(tokenizer))
    return _assemble(pieces, {p: _piece(tokenizer, p) for p, _ in pieces if isinstance(p, str)})


def encode_many(convs: Sequence[Conversation], tokenizer: Any, spec: TemplateSpec,
                chunk: int = 512) -> Iterator[tuple[list[int], list[int]]]:
    """encode_conversation for many records (the same ids), the text pieces tokenized in batches:
    ``encode_batch`` of the Rust tokenizer spreads a chunk over all cores (on one core it runs
    at the per-piece speed, ~1,000 Alpaca records/s measured with the LLaMA tokenizer)."""
    if spec.name == "tokenizer":
        for conv in convs:
            yield encode_conversation(conv, tokenizer, spec)
        return
    bos, eos = _special_ids(tokenizer)
    for start in range(0, len(convs), chunk):
        plans = [_plan(conv, spec, bos, eos) for conv in convs[start:start + chunk]]
        texts = list({p for plan in plans for p, _ in plan if isinstance(p, str)})
        token_ids = dict(zip(texts, tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"])
                         ) if texts else {}
        for plan in plans:
            yield _assemble(plan, token_ids)


def encode_prompt(conv: Conversation, tokenizer: Any, spec: TemplateSpec) -> list[int]:
    """Ids of a conversation whose last turn awaits its answer (generation / chat)."""
    *done, last = conv.turns
    if last.assistant is not None:
        raise ValueError("encode_prompt needs a final turn without an answer")
    if spec.name == "tokenizer":
        return _encode_chat_template(conv, tokenizer, spec, generation=True)[0]
    ids: list[int] = []
    if done:
        ids, _ = encode_conversation(Conversation(tuple(done), conv.system), tokenizer, spec)
    bos, _ = _special_ids(tokenizer)
    index = len(done)
    if bos is not None and (index == 0 or _bos_every_turn(spec)):
        ids.append(bos)
    return ids + _piece(tokenizer, prompt_piece(spec, index, last, _system(spec, conv)))


def _messages(conv: Conversation, spec: TemplateSpec) -> list[dict[str, str]]:
    system = _system(spec, conv)
    messages = [{"role": "system", "content": system}] if system is not None else []
    for turn in conv.turns:
        messages.append({"role": "user", "content": _join_input(turn)})
        if turn.assistant is not None:
            messages.append({"role": "assistant", "content": turn.assistant})
    return messages


def render_messages(tokenizer: Any, spec: TemplateSpec, messages: list[dict], generation: bool) -> str:
    """A ``tokenizer`` template's text for chat messages as SFT renders a conversation: the spec's
    system prompt first when the chat has none."""
    if spec.system_prompt is not None and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": spec.system_prompt}, *messages]
    return _render(tokenizer, spec, messages, generation)


def _render(tokenizer: Any, spec: TemplateSpec, messages: list[dict], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=spec.chat_template, tokenize=False,
                                         add_generation_prompt=generation)


def _encode_chat_template(conv: Conversation, tokenizer: Any, spec: TemplateSpec, generation: bool):
    messages = _messages(conv, spec)
    if generation:
        text = _render(tokenizer, spec, messages, generation=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None, text
    text = _render(tokenizer, spec, messages, generation=False)
    spans = [_answer_span(tokenizer, spec, messages, k, text)
             for k, message in enumerate(messages) if message["role"] == "assistant"]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, starts = list(enc["input_ids"]), [start for start, _end in enc["offset_mapping"]]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    trained = [any(lo <= start < hi for lo, hi, _ in spans) for start in starts]
    for _lo, hi, closed_by_token in spans:
        after = next((j for j, start in enumerate(starts) if start >= hi), None)
        if closed_by_token and after is not None and starts[after] == hi and ids[after] in special:
            trained[after] = True  # the token that ends the reply (<|im_end|>, </s>): generation must learn it
    return ids, [token if train else IGNORE_INDEX for token, train in zip(ids, trained)], text


def _answer_span(tokenizer: Any, spec: TemplateSpec, messages: list[dict], k: int, text: str) -> tuple[int, int, bool]:
    """Where assistant message ``k`` sits in ``text`` (the whole chat rendered), as (start, end, whether the
    special token right after it is trained too).

    Most templates render a chat incrementally: the chat up to the reply's generation prompt, then the
    reply and its closing text, are prefixes of the whole text, and that closing text is trained. Others
    render a turn by what comes after it: Qwen3 drops the empty <think> block from replies before the
    last question, Mistral-Nemo puts the system prompt in the last user turn, R1-distilled models' prompt
    ends with "<think>\n" that no whole chat has. There the reply is found by rendering the chat with
    its content replaced by a marker: the text around the marker is the text around the reply."""
    before = _render(tokenizer, spec, messages[:k], generation=True)
    upto = _render(tokenizer, spec, messages[: k + 1], generation=False)
    if upto.startswith(before) and text.startswith(upto):
        return len(before), len(upto), False
    marker = "zhllama-reply-marker"
    marked = [*messages[:k], {**messages[k], "content": marker}, *messages[k + 1:]]
    rendered = _render(tokenizer, spec, marked, generation=False)
    head, _, tail = rendered.partition(marker)
    if rendered.count(marker) != 1 or not (text.startswith(head) and text.endswith(tail)
                                           and len(head) + len(tail) <= len(text)):
        reply = sum(message["role"] == "assistant" for message in messages[: k + 1])
        raise UserError(f"the tokenizer's chat_template does not render reply {reply} of a chat where the rest of "
                        "the chat leaves room for it (it is left out, repeated, or changes the text around it); "
                        "cannot find the tokens to train on — use template alpaca or chinese-alpaca-2")
    start = len(before) if text.startswith(before) and len(before) <= len(head) else len(head)
    return start, len(text) - len(tail), True


def stop_ids(tokenizer: Any, spec: TemplateSpec) -> list[int]:
    """Ids that end an answer: what training taught the model to emit after each reply.

    The named templates append the tokenizer's EOS. A chat template closes an assistant turn with
    its own token — Llama-3's ``<|eot_id|>``, ChatML's ``<|im_end|>`` — and SFT trains on it (it is
    inside the rendered reply), so generation stops there too; stopping only at EOS, the model
    would write the next turn's header and go on until max_new_tokens."""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    closing = _turn_closing_id(tokenizer, spec) if spec.name == "tokenizer" else None
    return stops + ([closing] if closing is not None and closing not in stops else [])


def _turn_closing_id(tokenizer: Any, spec: TemplateSpec) -> int | None:
    """The special token right after a reply's text in the chat template's rendering, if any."""
    marker = "zhllama-end-of-reply"
    text = _render(tokenizer, spec, _messages(Conversation((Turn("?", marker),)), spec), generation=False)
    at = text.find(marker)
    if at < 0:
        return None
    after = tokenizer(text[at + len(marker):], add_special_tokens=False)["input_ids"]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return after[0] if after and after[0] in special else None


def truncate(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]] | None:
    """Cut to ``max_length`` tokens; None when nothing trainable would be left (the caller counts it)."""
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return ids, labels


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else 0. Any id works: padded
    positions are masked and labelled -100, so no <pad> token is added to the vocabulary."""
    return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
