"""An Ollama Go template read off a base's own chat template (``template: tokenizer``, sft/ollama_form.py).

Published chat templates (llama.cpp's models/templates, from the pinned llama-cpp-python sdist) and the
ones vocab writes for rank-file bases are rendered by transformers; the Go template read off each is run
by Go's text/template on the data Ollama builds (tests/ollama/render.go). The texts must be equal, less
the BOS that Ollama's tokenizer adds itself.
"""
from __future__ import annotations

import json

import pytest
from helpers_ollama import modelfile_values, render
from helpers_sft import our_tokenizer_folder

from sft.ollama_form import Misfit, check_chats, go_text, infer_form, render_form
from vocab.bbpe_templates import CHATML, LLAMA3, TEKKEN_V3, TEKKEN_V7

LLAMA3_BOS, DEEPSEEK_BOS = "<|begin_of_text|>", "<｜begin▁of▁sentence｜>"
# file stem in models/templates: (bos text, eos text, whether the model's tokenizer adds BOS)
PUBLISHED = {
    "meta-llama-Llama-3.1-8B-Instruct": (LLAMA3_BOS, "<|eot_id|>", True),
    "meta-llama-Llama-3.2-3B-Instruct": (LLAMA3_BOS, "<|eot_id|>", True),
    "meta-llama-Llama-3.3-70B-Instruct": (LLAMA3_BOS, "<|eot_id|>", True),
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>", False),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": (DEEPSEEK_BOS, "<｜end▁of▁sentence｜>", True),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>", False),
}
# Llama-2-chat's layout, written here: the system prompt inside the first user turn, BOS before every turn.
LLAMA2_LAYOUT = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set turns = messages %}{% endif %}{% for m in turns %}{% if m['role'] == 'user' %}"
    "{% if loop.first and system is defined %}{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content'] %}"
    "{% else %}{% set content = m['content'] %}{% endif %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
BRACES = ("{% for m in messages %}{{ '{{' + m['role'] + '}}: ' + m['content'] + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '{{assistant}}: ' }}{% endif %}")  # "{{" is text, not a Go action
OURS = {"llama3": (LLAMA3, LLAMA3_BOS, "<|eot_id|>", True, None), "chatml": (CHATML, "", "<|im_end|>", False, None),
        "tekken-v3": (TEKKEN_V3, "<s>", "</s>", True, "last"), "tekken-v7": (TEKKEN_V7, "<s>", "</s>", True, None),
        "llama2-layout": (LLAMA2_LAYOUT, "<s>", "</s>", True, "first"), "braces": (BRACES, "", "", False, None)}


def jinja(template: str, bos: str, eos: str):
    from transformers.utils.chat_template_utils import render_jinja_template

    def render_messages(messages, generation):
        return render_jinja_template([messages], chat_template=template, add_generation_prompt=generation,
                                     bos_token=bos, eos_token=eos)[0][0]
    return render_messages


@pytest.fixture(scope="module")
def published(llama_cpp_tree) -> dict[str, str]:
    """Every chat template in llama.cpp's models/templates (70 at 0c1e570), by file stem."""
    return {path.stem: path.read_text(encoding="utf-8")
            for path in sorted((llama_cpp_tree / "models" / "templates").glob("*.jinja"))}


def _cases(name, template, bos, eos, adds_bos) -> tuple[list[dict], list[str], list[str]]:
    """Go render cases for the check chats and the Jinja text each must give (less BOS), and the notes:
    chats that end with a reply are left out where the notes say they render differently."""
    render_messages = jinja(template, bos, eos)
    form, notes = infer_form(render_messages, bos, adds_bos)
    prompts_only = any("Chats that end with a reply" in note for note in notes)
    cases, want, unlike = [], [], 0
    for messages, generation in check_chats():
        text = render_messages(messages, generation)
        if prompts_only and not generation and (bos if adds_bos else "") + render_form(form, messages) != text:
            unlike += 1
            continue
        assert (bos if adds_bos else "") + render_form(form, messages) == text, name
        cases.append({"template": go_text(form), "system": "", "messages": messages})
        want.append(text[len(bos):] if adds_bos else text)
    assert bool(unlike) == prompts_only, name  # the note is there exactly when it is true
    return cases, want, notes


def test_go_renders_each_template_as_its_jinja(published, tmp_path):
    """The Llama-3, Qwen2.5, DeepSeek and Phi templates with their own BOS, vocab's and two written here."""
    cases, want = [], []
    for name, (bos, eos, adds_bos) in PUBLISHED.items():
        got = _cases(name, published[name], bos, eos, adds_bos)
        cases, want = cases + got[0], want + got[1]
    for name, (template, bos, eos, adds_bos, fold) in OURS.items():
        assert infer_form(jinja(template, bos, eos), bos, adds_bos)[0].fold == fold, name
        got = _cases(name, template, bos, eos, adds_bos)
        cases, want = cases + got[0], want + got[1]
    assert len(cases) == 12 * 18
    assert render(cases, tmp_path) == want


def test_most_published_templates_get_a_go_template_that_renders_their_prompts(published, tmp_path):
    """Every published template either gets a Go template, which Go runs into the Jinja text of each check
    prompt (and of each answered chat unless a note says otherwise), or a Misfit that says why."""
    cases, want, fits, misfits, prompts_only = [], [], [], {}, []
    for name, template in published.items():
        try:
            got = _cases(name, template, "<s>", "</s>", False)
        except Misfit as exc:
            misfits[name] = str(exc)
            continue
        fits.append(name)
        prompts_only += [name] if any("Chats that end with a reply" in note for note in got[2]) else []
        cases, want = cases + got[0], want + got[1]
    assert render(cases, tmp_path) == want
    assert {*PUBLISHED, "Qwen-Qwen3-0.6B", "Qwen3.5-4B", "mistralai-Mistral-Nemo-Instruct-2407",
            "Mistral-Small-3.2-24B-Instruct-2506", "deepseek-ai-DeepSeek-V3.1"} <= set(fits)
    assert {"Qwen-Qwen3-0.6B", "mistralai-Mistral-Nemo-Instruct-2407"} <= set(prompts_only)
    assert "System role not supported" in misfits["google-gemma-2-2b-it"]
    assert len(fits) >= 50, sorted(misfits.items())


def test_the_default_system_prompt_and_date_lines_open_a_chat_without_one(published):
    form, notes = infer_form(jinja(published["Qwen-Qwen2.5-7B-Instruct"], "", "<|im_end|>"), "", False)
    assert form.first == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                          "assistant.<|im_end|>\n<|im_start|>user\n") and notes == []
    form, notes = infer_form(jinja(published["meta-llama-Llama-3.1-8B-Instruct"], LLAMA3_BOS, "<|eot_id|>"),
                             LLAMA3_BOS, True)
    assert form.system_open.endswith("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
    assert form.user_open == "<|start_header_id|>user<|end_header_id|>\n\n" and "trims" in notes[0]


def test_qwen3_prompts_render_alike_and_the_last_reply_apart(published):
    """Qwen3 gives the reply after the last question an empty <think> block: prompts (history without it)
    get a Go template; a chat that ends with its reply does not render alike, and the note says so."""
    form, notes = infer_form(jinja(published["Qwen-Qwen3-0.6B"], "", "<|im_end|>"), "", False)
    assert (form.user_open, form.assistant_close) == ("<|im_start|>user\n", "<|im_end|>\n")
    assert "<think>" in notes[0] and "continue that reply" in notes[1]


def test_a_difference_in_a_later_turn_is_caught():
    """Control: ChatML whose third question alone is rendered differently fits the marker chats (two turns)."""
    third = CHATML.replace("{{ '<|im_start|>' + message['role']",
                           "{{ ('<|im_start|>' if loop.index0 != 4 else '<|im_start|> ') + message['role']")
    with pytest.raises(Misfit, match="user/assistant/user/assistant/user"):
        infer_form(jinja(third, "", "<|im_end|>"), "", False)


def test_bos_the_template_lacks_is_refused():
    with pytest.raises(Misfit, match="adds BOS"):
        infer_form(jinja(CHATML, "<s>", "<|im_end|>"), "<s>", True)


def test_the_modelfile_of_a_tokenizer_template(published, tmp_path):
    """`sft modelfile` on a folder whose SFT used the Llama-3.1 template with a system prompt of its own:
    Go renders what SFT rendered, the spec's system prompt included; Gemma-2's gets no TEMPLATE and says why."""
    from sft.ollama import modelfile_text
    from sft.templates import make_spec, render_messages
    from vocab.hf_export import load_hf_tokenizer

    folder = our_tokenizer_folder(tmp_path / "tok")
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    tok = load_hf_tokenizer(folder)
    tok.chat_template = published["meta-llama-Llama-3.1-8B-Instruct"]
    spec = make_spec("tokenizer", tok, system_prompt="你是助手。")
    spec.save(folder)
    values = modelfile_values(modelfile_text(folder, "m.gguf"))
    assert "SYSTEM" not in values and values["PARAMETER"] == ["num_ctx 256"]  # <|eot_id|> is no token of this one
    chats = check_chats()
    rendered = render([{"template": values["TEMPLATE"], "system": "", "messages": m} for m, _ in chats], tmp_path)
    for (messages, generation), text in zip(chats, rendered):
        assert tok.bos_token + text == render_messages(tok, spec, messages, generation)
    assert "你是助手。" in rendered[0]

    tok.chat_template = published["google-gemma-2-2b-it"]
    make_spec("tokenizer", tok).save(folder)
    text = modelfile_text(folder, "m.gguf")
    assert "TEMPLATE" not in modelfile_values(text) and "System role not supported" in text
