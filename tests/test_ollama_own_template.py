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
def published(llama_cpp_tree):
    folder = llama_cpp_tree / "models" / "templates"
    return {stem: (folder / f"{stem}.jinja").read_text(encoding="utf-8") for stem in
            (*PUBLISHED, "Qwen-Qwen3-0.6B", "mistralai-Mistral-Nemo-Instruct-2407")}


def _templates(published) -> dict[str, tuple]:
    return {**{stem: (published[stem], *PUBLISHED[stem], None) for stem in PUBLISHED}, **OURS}


def test_go_renders_each_template_as_its_jinja(published, tmp_path):
    cases, want = [], []
    for name, (template, bos, eos, adds_bos, fold) in _templates(published).items():
        render_messages = jinja(template, bos, eos)
        form, _ = infer_form(render_messages, bos, adds_bos)
        assert form.fold == fold, name
        for messages, generation in check_chats():
            text = render_messages(messages, generation)
            assert (bos if adds_bos else "") + render_form(form, messages) == text, name
            cases.append({"template": go_text(form), "system": "", "messages": messages})
            want.append(text[len(bos):] if adds_bos else text)
    assert len(cases) == 12 * 18
    assert render(cases, tmp_path) == want


def test_the_default_system_prompt_and_date_lines_open_a_chat_without_one(published):
    form, notes = infer_form(jinja(published["Qwen-Qwen2.5-7B-Instruct"], "", "<|im_end|>"), "", False)
    assert form.first == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                          "assistant.<|im_end|>\n<|im_start|>user\n") and notes == []
    form, notes = infer_form(jinja(published["meta-llama-Llama-3.1-8B-Instruct"], LLAMA3_BOS, "<|eot_id|>"),
                             LLAMA3_BOS, True)
    assert form.system_open.endswith("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
    assert form.user_open == "<|start_header_id|>user<|end_header_id|>\n\n" and "trims" in notes[0]


@pytest.mark.parametrize("stem, bos, says", [
    ("Qwen-Qwen3-0.6B", "", "turns are not rendered alike"),  # the reply after the last question gets <think>
    ("mistralai-Mistral-Nemo-Instruct-2407", "<s>", "system prompt"),  # the system prompt only when a user speaks last
])
def test_a_template_no_form_reproduces_is_refused(published, stem, bos, says):
    with pytest.raises(Misfit, match=says):
        infer_form(jinja(published[stem], bos, "</s>"), bos, bool(bos))


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
    Go renders what SFT rendered, the spec's system prompt included; Qwen3's gets no TEMPLATE and says why."""
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

    tok.chat_template = published["Qwen-Qwen3-0.6B"]
    make_spec("tokenizer", tok).save(folder)
    text = modelfile_text(folder, "m.gguf")
    assert "TEMPLATE" not in modelfile_values(text) and "turns are not rendered alike" in text
