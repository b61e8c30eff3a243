"""The Jinja chat templates written into exports render exactly the ids SFT trains on."""
from __future__ import annotations

import json

import pytest
from helpers_sft import CONVERSATIONS, chat_messages, our_tokenizer_folder

from sft.chat_templates import install_chat_template, jinja_template
from sft.data import Conversation, Turn
from sft.templates import encode_conversation, encode_prompt, make_spec

NAMES = ("alpaca", "chinese-alpaca", "chinese-alpaca-2")


def _check_all(tok) -> int:
    checked = 0
    for name in NAMES:
        for system_prompt in (None, "Be brief. 简短回答。"):
            spec = make_spec(name, tok, system_prompt)
            tok.chat_template = jinja_template(spec)
            for conv in CONVERSATIONS:
                if name == "alpaca" and any(t.input for t in conv.turns):
                    continue  # the "### Input:" variant is not expressible in chat messages
                ids, _ = encode_conversation(conv, tok, spec)
                text = tok.apply_chat_template(chat_messages(conv), tokenize=False)
                assert tok(text, add_special_tokens=False)["input_ids"] == ids, (name, text)
                asked = Conversation(conv.turns[:-1] + (Turn(conv.turns[-1].user, None),), conv.system)
                prompt = tok.apply_chat_template(chat_messages(asked), tokenize=False, add_generation_prompt=True)
                assert tok(prompt, add_special_tokens=False)["input_ids"] == encode_prompt(asked, tok, spec), name
                checked += 1
    return checked


def test_rendered_templates_give_the_training_ids(tmp_path):
    from vocab.hf_export import load_hf_tokenizer

    tok = load_hf_tokenizer(our_tokenizer_folder(tmp_path / "tok"))
    assert _check_all(tok) == 22


def test_rendered_templates_give_the_training_ids_with_llama(tmp_path, shared_data):
    from vocab.hf_export import load_hf_tokenizer

    folder = our_tokenizer_folder(tmp_path / "tok", shared_data / "tokenizers" / "llama2c" / "tokenizer.model")
    tok = load_hf_tokenizer(folder)
    assert _check_all(tok) == 22


def test_a_wrong_template_is_caught(tmp_path):
    """Control: the old rendering (prompt and answer joined without the space) gives other ids."""
    from vocab.hf_export import load_hf_tokenizer

    tok = load_hf_tokenizer(our_tokenizer_folder(tmp_path / "tok"))
    spec = make_spec("chinese-alpaca-2", tok)
    tok.chat_template = jinja_template(spec).replace("{{ ' ' + content", "{{ content")
    conv = CONVERSATIONS[0]
    text = tok.apply_chat_template(chat_messages(conv), tokenize=False)
    assert tok(text, add_special_tokens=False)["input_ids"] != encode_conversation(conv, tok, spec)[0]


def test_install_keeps_every_other_key_and_the_fingerprint(tmp_path):
    from zhllama.tokenizer_files import tokenizer_fingerprint

    folder = our_tokenizer_folder(tmp_path / "tok")
    before = json.loads((folder / "tokenizer_config.json").read_text())
    fingerprint = tokenizer_fingerprint(folder)
    spec = make_spec("chinese-alpaca-2", None, "系统")
    template = install_chat_template(folder, spec)
    after = json.loads((folder / "tokenizer_config.json").read_text())
    assert after.pop("chat_template") == template and "系统" in template
    assert after == before and tokenizer_fingerprint(folder) == fingerprint


@pytest.mark.parametrize("name", NAMES)
def test_every_named_template_has_one(name):
    assert "messages" in jinja_template(make_spec(name, None))


def test_tokenizer_template_offsets_with_our_folder(tmp_path):
    """template 'tokenizer' finds assistant tokens by character offsets; with the folder's
    normalizer ("▁" before every piece of text) the offsets still point into the rendered text."""
    from vocab.hf_export import load_hf_tokenizer

    from sft.templates import IGNORE_INDEX

    tok = load_hf_tokenizer(our_tokenizer_folder(tmp_path / "tok"))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == "
                         "'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    spec = make_spec("tokenizer", tok)
    ids, labels = encode_conversation(Conversation((Turn("你好", "你好！"), Turn("再见", " 再见。"))), tok, spec)
    assert tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == "你好！</s> 再见。</s>"
