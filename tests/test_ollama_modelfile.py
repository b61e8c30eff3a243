"""The Ollama Modelfile that `sft export --gguf` writes: its TEMPLATE, run by Go's text/template on the
data Ollama hands a template (tests/ollama/render.go), renders the Jinja template's text without the
leading BOS, and llama.cpp tokenizes that text (BOS added, special tokens read, as Ollama does) into
the ids SFT trained on."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_ollama import modelfile_values, render
from helpers_sft import CONVERSATIONS, chat_messages, our_tokenizer_folder

from sft.data import Conversation, Turn
from sft.ollama import go_template, modelfile_text, write_modelfile
from sft.templates import TemplateSpec, encode_conversation, encode_prompt, make_spec
from zhllama.errors import UserError

NAMES = ("alpaca", "chinese-alpaca", "chinese-alpaca-2")


def _asked(conv: Conversation) -> Conversation:
    """The conversation up to its last question: the prompt a model answers."""
    return Conversation(conv.turns[:-1] + (Turn(conv.turns[-1].user, None),), conv.system)


def _cases(values: dict, tok, spec: TemplateSpec) -> tuple[list[dict], list[list[int]], list[str]]:
    """Render cases for every conversation and its prompt, with the training ids and the Jinja text of each."""
    cases, ids, jinja = [], [], []
    for conv in CONVERSATIONS:
        if spec.name == "alpaca" and any(t.input for t in conv.turns):
            continue  # the "### Input:" variant is not expressible in chat messages
        for shown, want, generation in ((conv, encode_conversation(conv, tok, spec)[0], False),
                                        (_asked(conv), encode_prompt(_asked(conv), tok, spec), True)):
            cases.append({"template": values["TEMPLATE"], "system": values["SYSTEM"], "messages": chat_messages(shown)})
            ids.append(want)
            jinja.append(tok.apply_chat_template(chat_messages(shown), tokenize=False, add_generation_prompt=generation)
                         if tok.chat_template else None)
    return cases, ids, jinja


def _folder(tmp_path, context: int = 256):
    from vocab.hf_export import load_hf_tokenizer

    folder = our_tokenizer_folder(tmp_path / "tok")
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": context}))
    return folder, load_hf_tokenizer(folder)


def test_the_template_renders_the_training_prompts(tmp_path):
    from sft.chat_templates import install_chat_template

    folder, tok = _folder(tmp_path)
    cases, want, jinja = [], [], []
    for name in NAMES:
        for system_prompt in (None, "Be brief. 简短回答。"):
            spec = make_spec(name, tok, system_prompt)
            spec.save(folder)
            tok.chat_template = install_chat_template(folder, spec)
            got = _cases(modelfile_values(modelfile_text(folder, "m.gguf")), tok, spec)
            cases, want, jinja = cases + got[0], want + got[1], jinja + got[2]
    assert len(cases) == 44
    rendered = render(cases, tmp_path)
    for text, ids, jinja_text in zip(rendered, want, jinja):
        assert tok.bos_token + text == jinja_text  # Ollama's tokenizer adds the BOS itself
        assert [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] == ids, text


def test_a_wrong_template_is_caught(tmp_path):
    """Control: the answer without its leading space renders other ids."""
    folder, tok = _folder(tmp_path)
    spec = make_spec("chinese-alpaca-2", tok)
    spec.save(folder)
    values = modelfile_values(modelfile_text(folder, "m.gguf"))
    values["TEMPLATE"] = values["TEMPLATE"].replace(" {{ .Content }}", "{{ .Content }}")
    cases, want, _ = _cases(values, tok, spec)
    text = render(cases[:1], tmp_path)[0]
    assert [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] != want[0]


def test_llama_cpp_tokenizes_the_rendered_prompts_into_the_sft_ids(chain, llama_cpp_tree, tmp_path):
    """The SFT export of the tiny chain (chinese-alpaca-2): GGUF + Modelfile as `sft export --gguf` writes them."""
    import helpers_llama_cpp as llama_cpp

    from vocab.hf_export import load_hf_tokenizer
    from zhllama.gguf import convert

    folder = tmp_path / "export"  # a copy: `sft modelfile` writes into it
    shutil.copytree(chain["export"], folder, ignore=shutil.ignore_patterns("*.gguf", "Modelfile"))
    gguf = convert(folder, tmp_path / "vocab.gguf", vocab_only=True)
    proc = _sft("modelfile", str(folder), "--gguf", str(gguf))
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = modelfile_values((folder / "Modelfile").read_text(encoding="utf-8"))
    assert values["FROM"] == "../vocab.gguf"
    spec, tok = TemplateSpec.load(folder), load_hf_tokenizer(folder)
    assert spec.name == "chinese-alpaca-2"
    cases, want, _ = _cases(values, tok, spec)
    got = llama_cpp.tokenize(gguf, render(cases, tmp_path), tmp_path, special=True)
    assert [[tok.bos_token_id] + ids for ids in got] == want
    assert sum(ids.count(tok.bos_token_id) for ids in want) > len(want)  # later turns' <s> read as BOS


def _sft(*args: str) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "sft", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)


def test_modelfile_refuses_what_is_not_a_gguf(tmp_path):
    folder, _ = _folder(tmp_path)
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    proc = _sft("modelfile", str(folder), "--gguf", str(tmp_path / "model.gguf"))
    assert proc.returncode == 2 and "not a GGUF file" in proc.stderr
    proc = _sft("modelfile", str(tmp_path / "missing"), "--gguf", str(tmp_path / "model.gguf"))
    assert proc.returncode == 2 and "no config.json" in proc.stderr
    assert not (folder / "Modelfile").exists()


def test_a_base_model_gets_no_template_and_a_bounded_context(tmp_path):
    folder, _ = _folder(tmp_path, context=131072)
    text = modelfile_text(folder, "model-q8_0.gguf")
    values = modelfile_values(text)
    assert values["FROM"] == "./model-q8_0.gguf" and "TEMPLATE" not in values and "SYSTEM" not in values
    assert values["PARAMETER"] == ["num_ctx 8192"]
    path = write_modelfile(folder, text)
    assert path.read_text(encoding="utf-8") == text and not list(folder.glob(".*.partial"))


def test_the_stops_are_the_next_turns_marker(tmp_path):
    folder, tok = _folder(tmp_path)
    for name, stop in (("chinese-alpaca", "### Instruction:"), ("chinese-alpaca-2", "[INST]")):
        make_spec(name, tok).save(folder)
        assert modelfile_values(modelfile_text(folder, "m.gguf"))["PARAMETER"] == [f'stop "{stop}"', "num_ctx 256"]
    assert go_template(make_spec("chinese-alpaca-2", tok), "<s>", "</s>").count("<s>") == 1  # later turns only


@pytest.mark.parametrize("system, says", [('说 """ 三个引号', 'holds """'),
                                          ("全角\u3000空格", "U+3000"), ("零宽\u200b字符", "U+200B")])
def test_what_the_modelfile_parser_would_cut_or_drop_is_refused(tmp_path, system, says):
    folder, tok = _folder(tmp_path)
    make_spec("chinese-alpaca-2", tok, system).save(folder)
    with pytest.raises(UserError, match=re.escape(says)):
        modelfile_text(folder, "m.gguf")
