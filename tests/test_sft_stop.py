"""Generation stops where the template's reply ends: EOS for the named templates, and for a chat
template the special token that closes an assistant turn (Llama-3 <|eot_id|>, ChatML <|im_end|>),
which SFT trains the model to emit. The exported folder's generation_config.json lists it too."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_sft import tiny_model, tiny_tokenizer

from sft.data import Conversation, Turn
from sft.generate import Sampling, generate_ids
from sft.serve import Engine
from sft.templates import encode_conversation, encode_prompt, make_spec, stop_ids

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny model whose tokenizer's chat template closes every turn with the special <|eot|>."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("stop")
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer(root / "sp")))
    tok.add_special_tokens({"additional_special_tokens": ["<|eot|>"]})
    tok.chat_template = TEMPLATE
    tok.save_pretrained(root / "tok")
    return tiny_model(root / "model", root / "tok")


def _always(model, token: int):
    """The model's head replaced by one that always ranks ``token`` first (greedy emits only it)."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = 10.0
    model.lm_head = head
    return model


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(str(folder))


def test_stop_ids_are_eos_and_the_turn_closing_token(chat_model):
    _, tok = _load(chat_model)
    eot = tok.convert_tokens_to_ids("<|eot|>")
    spec = make_spec("tokenizer", tok)
    assert stop_ids(tok, spec) == [tok.eos_token_id, eot]
    assert stop_ids(tok, make_spec("chinese-alpaca-2", tok)) == [tok.eos_token_id]
    ids, labels = encode_conversation(Conversation((Turn("你好", "再见"),)), tok, spec)
    assert ids[-1] == labels[-1] == eot  # SFT trains the model to close its reply with it


def test_generation_stops_at_the_end_of_a_reply(chat_model):
    model, tok = _load(chat_model)
    eot = tok.convert_tokens_to_ids("<|eot|>")
    model = _always(model, eot)
    spec = make_spec("tokenizer", tok)
    prompt = encode_prompt(Conversation((Turn("你好", None),)), tok, spec)
    sampling = Sampling(max_new_tokens=6, repetition_penalty=1.0)
    assert generate_ids(model, tok, [prompt], sampling) == [[eot] * 6]  # EOS alone never comes
    assert generate_ids(model, tok, [prompt], sampling, stop=stop_ids(tok, spec)) == [[]]
    engine = Engine(model=model, tokenizer=tok, spec=spec, name="m")  # what `sft serve` answers
    assert engine.generate(prompt, sampling) == ([], "stop")


def test_export_writes_the_stop_ids_to_generation_config(chat_model, tmp_path):
    from sft.export import export_merged

    _, tok = _load(chat_model)
    run = tmp_path / "run" / "final"  # a full-mode run's final/: weights, tokenizer, template
    run.mkdir(parents=True)
    for path in chat_model.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    make_spec("tokenizer", tok).save(run)
    export_merged(chat_model, tmp_path / "run", tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert config["eos_token_id"] == [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot|>")]
