"""Record parsing and validation, the content-keyed cache, weights/holdout, collator and packing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_sft import ZH_RECORDS, load_tokenizer, tiny_model, tiny_tokenizer, write_json, write_jsonl

from sft import cache as sft_cache
from sft.collate import SFTCollator, SFTDataset, TokenizedSamples
from sft.config import SFTData, SFTFile
from sft.data import load_conversations, load_prompts, parse_record
from corpora.manifest import repeat_count
from sft.mixture import build_datasets
from sft.templates import IGNORE_INDEX, make_spec
from zhllama.errors import UserError


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_malformed_records_name_file_and_record_all_at_once(tmp_path):
    bad_array = write_json(tmp_path / "a.json", [
        ZH_RECORDS[0],
        {"instruction": "缺少输出", "input": ""},               # record 2: missing output
        {"instruction": 42, "output": "x"},                    # record 3: wrong type
        {"conversations": [{"from": "gpt", "value": "先说话"}]},  # record 4: starts with the assistant
    ])
    with pytest.raises(UserError) as info:
        load_conversations(bad_array)
    msg = str(info.value)
    assert f"{bad_array}: record 2: missing `output`" in msg
    assert f"{bad_array}: record 3: `instruction` must be a string, got int" in msg
    assert f"{bad_array}: record 4:" in msg and "alternate" in msg
    assert "record 1:" not in msg

    bad_lines = tmp_path / "b.jsonl"
    bad_lines.write_text(json.dumps(ZH_RECORDS[0], ensure_ascii=False) + "\n\n{\"instruction\": \"断了\",\n",
                         encoding="utf-8")
    with pytest.raises(UserError, match=r"b\.jsonl: line 3 \(record 2\): not valid JSON"):
        load_conversations(bad_lines)

    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"data": ZH_RECORDS}, ensure_ascii=False, indent=1), encoding="utf-8")
    with pytest.raises(UserError, match=r"w\.json: one JSON object \(keys: data\); expected a JSON array"):
        load_conversations(wrapped)

    broken_array = tmp_path / "c.json"
    broken_array.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": }]', encoding="utf-8")
    with pytest.raises(UserError, match=r"c\.json: line 2 column \d+: not valid JSON"):
        load_conversations(broken_array)


def test_conversation_formats_normalise_to_the_same_turns():
    belle = {"conversations": [{"from": "human", "value": "你好"}, {"from": "assistant", "value": "你好！"},
                               {"from": "human", "value": "再见"}, {"from": "assistant", "value": "再见。"}]}
    sharegpt = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
                                  {"from": "human", "value": "再见"}, {"from": "gpt", "value": "再见。"}]}
    openai = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "你好"},
                           {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "再见"},
                           {"role": "assistant", "content": "再见。"}]}
    alpaca = {"instruction": "再见", "input": "", "output": "再见。", "history": [["你好", "你好！"]]}
    turns = parse_record(belle).turns
    assert [(t.user, t.assistant) for t in turns] == [("你好", "你好！"), ("再见", "再见。")]
    assert parse_record(sharegpt).turns == turns == parse_record(alpaca).turns
    assert parse_record(openai).turns == turns and parse_record(openai).system == "S"


def test_belle_eval_prompts_keep_reference_and_class(tmp_path):
    path = write_jsonl(tmp_path / "eval_set.json", [
        {"question": "中国有多少个省？", "std_answer": "34个省级行政区。", "class": "open qa"},
        {"question": "写一首诗", "std_answer": "", "class": "generation"},
    ])
    items = load_prompts(path)
    assert [i.conversation.turns[0].user for i in items] == ["中国有多少个省？", "写一首诗"]
    assert [i.reference for i in items] == ["34个省级行政区。", None]  # empty reference: not scored
    assert [i.category for i in items] == ["open qa", "generation"]


def test_real_belle_eval_set_loads(shared_data):
    items = load_prompts(shared_data / "sft" / "belle_eval_set.json")
    assert len(items) == 1000 and sum(i.reference is not None for i in items) == 631


def test_cache_is_keyed_on_content_and_reused(tmp_path, tok_dir, monkeypatch):
    tok = load_tokenizer(tok_dir)
    spec = make_spec("alpaca", tok)
    path = write_json(tmp_path / "d.json", ZH_RECORDS)
    convs = load_conversations(path)
    s1, st1, key1 = sft_cache.cached_tokenize(path, convs, tok, spec, 256, tmp_path / "cache", "fp")
    monkeypatch.setattr(sft_cache, "encode_all", lambda *a, **k: pytest.fail("cache miss on unchanged input"))
    s2, st2, key2 = sft_cache.cached_tokenize(path, convs, tok, spec, 256, tmp_path / "cache", "fp")
    assert key1 == key2 and np.array_equal(s1.tokens, s2.tokens) and np.array_equal(s1.labels, s2.labels)
    assert st2.kept == len(ZH_RECORDS)
    # another template, length or file content is another key
    assert sft_cache.cache_key("x", "fp", spec, 256) != sft_cache.cache_key("x", "fp", make_spec("chinese-alpaca-2", tok), 256)
    assert sft_cache.cache_key("x", "fp", spec, 256) != sft_cache.cache_key("x", "fp", spec, 128)
    assert sft_cache.cache_key("x", "fp", spec, 256) != sft_cache.cache_key("y", "fp", spec, 256)


def test_weights_and_holdout_are_deterministic(tmp_path, tok_dir):
    assert repeat_count(2.0, 0, "k") == 2 and repeat_count(0.0, 0, "k") == 0
    picks = [repeat_count(0.5, 0, bytes([i, j]).hex()) for i in range(20) for j in range(20)]
    assert 150 < sum(picks) < 250 and set(picks) == {0, 1}
    tok = load_tokenizer(tok_dir)
    a = write_json(tmp_path / "a.json", ZH_RECORDS)
    b = write_json(tmp_path / "b.json", ZH_RECORDS[:2])
    data = SFTData(files=[SFTFile(str(a), 1.0), SFTFile(str(b), 3.0)], max_seq_length=256,
                   cache_dir=str(tmp_path / "cache"))
    spec = make_spec("alpaca", tok)
    train, evaluation, report = build_datasets(data, tok, spec, "fp", order_seed=1)
    assert evaluation is None and report.train_samples == len(ZH_RECORDS) + 3 * 2
    again, _, report2 = build_datasets(data, tok, spec, "fp", order_seed=1)
    assert again.rows == train.rows and report2.fingerprint == report.fingerprint
    data.eval_fraction = 0.5  # held-out records are chosen by content: same split every time
    train, evaluation, report = build_datasets(data, tok, spec, "fp", order_seed=2)
    held = report.files["a.json"]["held_out_records"]
    assert 0 < held < len(ZH_RECORDS) and len(evaluation) == held + report.files["b.json"]["held_out_records"]
    _, evaluation2, _ = build_datasets(data, tok, spec, "fp", order_seed=3)
    assert evaluation2.rows == evaluation.rows


def test_collator_pads_right_and_masks():
    items = [{"input_ids": torch.tensor([1, 5, 6, 7]), "labels": torch.tensor([-100, -100, 6, 7])},
             {"input_ids": torch.tensor([1, 8]), "labels": torch.tensor([-100, 8])}]
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=8)(items)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 0, 0, 0, 0], [1, 8, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [-100, 8] + [-100] * 6
    assert batch["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 2 + [0] * 6]


def test_packed_rows_give_the_same_logits_as_separate_samples(tmp_path, tok_dir):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tok_dir)
    spec = make_spec("chinese-alpaca-2", tok)
    samples, _ = sft_cache.encode_all(load_conversations(write_json(tmp_path / "d.json", ZH_RECORDS[:3])),
                                      tok, spec, 512)
    total = sum(samples.length(i) for i in range(3))
    packed = SFTDataset.packed_from(samples, [0, 1, 2], max_length=total + 3)
    assert len(packed) == 1
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=total + 3)([packed[0]])  # 3 padding tokens
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, total + 3)
    starts = [0, samples.length(0), samples.length(0) + samples.length(1), total]
    assert [int(batch["position_ids"][0, s]) for s in starts] == [0, 0, 0, 0]  # restarts, padding too
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(tmp_path / "m", tok_dir)), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for k in range(3):
            ids, _ = samples.get(k)
            alone = model(input_ids=torch.tensor(ids[None], dtype=torch.long), use_cache=False).logits
            torch.testing.assert_close(logits[:, starts[k]:starts[k + 1]], alone, atol=1e-5, rtol=1e-5)
    assert (batch["labels"][0, total:] == IGNORE_INDEX).all()


def test_tokenized_samples_concat():
    a = TokenizedSamples.from_lists([([1, 2], [-100, 2]), ([3], [3])], [0, 1])
    b = TokenizedSamples.from_lists([([4, 5, 6], [-100, 5, 6])], [4])
    merged, starts = TokenizedSamples.concat([a, b])
    assert starts == [0, 2] and len(merged) == 3
    assert merged.get(2)[0].tolist() == [4, 5, 6] and merged.records.tolist() == [0, 1, 4]


def test_records_with_an_empty_instruction_are_warned_about(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "写一首诗", "output": "春眠不觉晓"},
        {"instruction": "  ", "output": "无题"},
        {"instruction": "", "input": "翻译：hello", "output": "你好"},  # the input carries the request: fine
        {"instruction": "", "output": "空"},
    ])
    assert len(load_conversations(path)) == 4
    err = capsys.readouterr().err
    assert "2 of 4 records have an empty instruction and input (records 2, 4)" in err
    load_conversations(write_jsonl(tmp_path / "ok.jsonl", [{"instruction": "问", "output": "答"}]))
    assert "warning" not in capsys.readouterr().err
