"""A Mistral Nemo (Tekken v3) base extended with Chinese gets Mistral's instruct template, and it
gives exactly the ids mistral-common gives — on the extended tekken.json, Chinese included. The same for
the v7 format (Mistral Small 3: ``[SYSTEM_PROMPT]`` first) on a v7 file, and on a v13 file that lists its
special tokens (``[THINK]`` among them) as the newer files do.

mistral-common 1.13.1 (pinned) is installed once into the cache with pip (``--target``) and run in a
subprocess on the folder's own tekken.json: ``encode_instruct`` for training conversations (ending
with an answer), ``encode_chat_completion`` for prompts. Our side is what SFT does: the chat
template rendered by transformers and tokenized, and ``sft.templates`` encoding with labels.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pinned_site

SYSTEM = "你是一个乐于助人的助手。"
CONVERSATIONS = [
    [{"role": "user", "content": "你好，请介绍一下北京大学。"}, {"role": "assistant", "content": "北京大学是中国的一所大学。"}],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "再见"},
     {"role": "user", "content": "hi there"}, {"role": "assistant", "content": " Hello!  "}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "天气如何？"}, {"role": "assistant", "content": "晴天。"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "你好"}, {"role": "assistant", "content": "再见"},
     {"role": "user", "content": "研究人员发布了什么？"}, {"role": "assistant", "content": "新的大语言模型。"}],
    [{"role": "system", "content": "SYS"}, {"role": "user", "content": "中文问题"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "北京的研究人员"}],
]
_SCRIPT = """
import json, sys
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest, InstructRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
tok = MistralTokenizer.from_file(sys.argv[1])
kinds = {"user": UserMessage, "assistant": AssistantMessage}
v3 = json.load(open(sys.argv[1]))["config"]["version"] == "v3"
out = []
for conv in json.loads(sys.argv[2]):
    system = next((m["content"] for m in conv if m["role"] == "system"), None)
    msgs = [kinds[m["role"]](content=m["content"]) for m in conv if m["role"] != "system"]
    if conv[-1]["role"] == "assistant" and v3:  # v3 takes the system prompt beside the messages
        out.append(tok.instruct_tokenizer.encode_instruct(InstructRequest(messages=msgs, system_prompt=system)).tokens)
    elif conv[-1]["role"] == "assistant":  # v7+: a system message, first
        system_msgs = [SystemMessage(content=system)] if system else []
        out.append(tok.instruct_tokenizer.encode_instruct(InstructRequest(messages=system_msgs + msgs)).tokens)
    else:
        system_msgs = [SystemMessage(content=system)] if system else []
        out.append(tok.encode_chat_completion(ChatCompletionRequest(messages=system_msgs + msgs)).tokens)
print(json.dumps(out))
"""


# v13 files list their special tokens: mistral-common's 20 defaults, then the later ones ([ARGS], [THINK], ...)
NEWER_SPECIALS = ["[ARGS]", "[CALL_ID]", "[AUDIO]", "[BEGIN_AUDIO]", "[TRANSCRIBE]", "[THINK]", "[/THINK]"]


@pytest.fixture(scope="module", params=["v3", "v7", "v13"])
def extended(request, fetched, cmrc_lines, tmp_path_factory) -> Path:
    from vocab.bbpe_merge import extend_bbpe
    from vocab.bbpe_profiles import TEKKEN_DEFAULT_SPECIALS
    from vocab.bbpe_train import TrainSettings

    root = tmp_path_factory.mktemp(f"tekken_{request.param}")
    base = root / "tekken.json"
    raw = json.loads(fetched["tekken_240911.json"].read_text(encoding="utf-8"))
    raw["config"]["version"] = request.param
    if request.param == "v13":
        names = TEKKEN_DEFAULT_SPECIALS + NEWER_SPECIALS
        raw["special_tokens"] = [{"rank": i, "token_str": n, "is_control": True} for i, n in enumerate(names)]
    base.write_text(json.dumps(raw), encoding="utf-8")
    extend_bbpe(base, cmrc_lines[:300], root / "out", TrainSettings(new_tokens=200), verify=False)
    return root / "out"


@pytest.fixture(scope="module")
def mistral_ids(extended) -> list[list[int]]:
    site = pinned_site("mistral-common-1.13.1", ("mistral-common==1.13.1",))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(extended / "tekken.json"),
                           json.dumps(CONVERSATIONS, ensure_ascii=False)],
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_template_renders_mistral_commons_ids(extended, mistral_ids):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(extended))
    ours = []
    for conv in CONVERSATIONS:
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=conv[-1]["role"] == "user")
        ours.append(tok(text, add_special_tokens=False)["input_ids"])
    assert ours == mistral_ids
    new_ids = json.loads((extended / "merge_report.json").read_text())["new_ids"]
    assert any(new_ids[0] <= i for ids in mistral_ids for i in ids)  # the new Chinese tokens are in play


def test_sft_encodes_and_stops_as_mistral_common(extended, mistral_ids):
    from transformers import AutoTokenizer

    from sft.data import Conversation, Turn
    from sft.templates import encode_conversation, encode_prompt, make_spec, stop_ids

    tok = AutoTokenizer.from_pretrained(str(extended))
    spec = make_spec("tokenizer", tok)
    assert stop_ids(tok, spec) == [tok.eos_token_id]  # a reply ends with </s>
    for conv, want in zip(CONVERSATIONS, mistral_ids):
        system = next((m["content"] for m in conv if m["role"] == "system"), None)
        pairs = [m["content"] for m in conv if m["role"] != "system"] + ([None] if conv[-1]["role"] == "user" else [])
        turns = tuple(Turn(pairs[k], pairs[k + 1]) for k in range(0, len(pairs), 2))
        conversation = Conversation(turns, system)
        v3 = json.loads((extended / "tekken.json").read_text(encoding="utf-8"))["config"]["version"] == "v3"
        if conv[-1]["role"] == "user":
            assert encode_prompt(conversation, tok, spec) == want
        else:
            ids, labels = encode_conversation(conversation, tok, spec)
            assert ids == want and labels[-1] == tok.eos_token_id
            # v3 moves the system prompt into the last user message, so the text before an earlier answer is
            # not the text of the chat up to it: the answers are found by marker (sft/templates._answer_span)
            runs, run = [], []
            for token, label in zip(ids, labels):
                if label != -100:
                    run.append(token)
                elif run:
                    runs, run = runs + [run], []
            runs += [run] if run else []
            answers = [t.assistant for t in turns]
            assert [tok.decode(r) for r in runs] == [a.rstrip(" ") + tok.eos_token for a in answers], (v3, system)
