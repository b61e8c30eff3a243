"""`sft generate` on BELLE eval records writes predictions + per-class scores; `sft chat` keeps history."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from helpers_sft import load_tokenizer, tiny_model, tiny_tokenizer, write_jsonl

from sft import chat_cli, generate_cli
from sft.generate import rouge_l_f1_chars
from sft.templates import TemplateSpec

BELLE = [
    {"question": "中国有多少个省？", "std_answer": "中国有34个省级行政区。", "class": "open qa"},
    {"question": "写一首关于春天的诗。", "std_answer": "", "class": "generation"},
    {"question": "把下面的句子翻译成英文：\n春眠不觉晓", "std_answer": "Spring sleep knows no dawn.", "class": "rewrite"},
    {"question": "1+1等于几？", "std_answer": "2", "class": "math"},
    {"question": "大语言模型是什么？", "std_answer": "一种在大量文本上训练的模型。", "class": "open qa"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    folder = tiny_model(root / "model", tiny_tokenizer(root / "tok"))
    TemplateSpec("chinese-alpaca-2").save(folder)  # as `sft export` leaves it
    return folder


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_rouge_l_on_characters():
    assert rouge_l_f1_chars("中国有34个省", "中国有34个省") == 1.0
    assert rouge_l_f1_chars("abcd", "abed") == pytest.approx(0.75)  # LCS abd: P = R = 3/4
    assert rouge_l_f1_chars("你好", "再见") == 0.0 and rouge_l_f1_chars("", "x") == 0.0
    assert rouge_l_f1_chars("春 眠", "春眠") == 1.0  # whitespace does not count


def _check_predictions(out: Path, records: list[dict]):
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(records)
    for row, record in zip(rows, records):
        assert {"id", "class", "question", "std_answer", "prediction", "rouge_l_f1_char", "template", "finished",
                "repetition", "looping", "language_switch"} <= set(row)
        assert row["question"] == record["question"] and row["class"] == record["class"]
        assert isinstance(row["prediction"], str) and row["template"] == "chinese-alpaca-2"
        assert (row["rouge_l_f1_char"] is None) == (not record["std_answer"])
    return rows


def test_generate_on_belle_records(model_dir, tmp_path, capsys):
    source = write_jsonl(tmp_path / "eval_set.json", BELLE)  # JSON Lines under a .json name, like BELLE's
    out = tmp_path / "pred.jsonl"
    code = generate_cli.run(_args(generate_cli, ["--model", str(model_dir), "--input", str(source), "--out", str(out),
                                                 "--batch-size", "2", "--max-new-tokens", "6"]))
    assert code == 0
    _check_predictions(out, BELLE)
    scores = json.loads((tmp_path / "pred.scores.json").read_text(encoding="utf-8"))
    assert set(scores["by_class"]) == {"open qa", "rewrite", "math", "all"}  # generation has no reference
    assert scores["by_class"]["open qa"]["scored"] == 2 and scores["by_class"]["all"]["scored"] == 4
    assert "ROUGE-L" in scores["metric"] and 0 <= scores["by_class"]["all"]["exact_match"] <= 1
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    health = scores["health"]
    assert set(health) == {"open qa", "generation", "rewrite", "math", "all"} and health["all"]["answers"] == 5
    assert health["all"]["unfinished"] == sum(not r["finished"] for r in rows) / 5
    assert "| class | answers | unfinished | looping | language switch |" in capsys.readouterr().out


def test_classification_records_score_exact_match_per_label(tmp_path):
    from sft.data import load_prompts
    from sft.generate import score_by_class

    path = write_jsonl(tmp_path / "cls.jsonl", [
        {"instruction": "判断情感", "input": "很好用", "label": "正面"},
        {"instruction": "判断情感", "input": "太差了", "label": "负面"},
        {"instruction": "判断情感", "input": "还行吧", "label": "正面"},
    ])
    items = load_prompts(path)
    assert [i.conversation.turns[0].input for i in items] == ["很好用", "太差了", "还行吧"]
    scores = score_by_class(items, ["正面", "正面", " 正面\n"])
    assert scores["正面"]["exact_match"] == 1.0 and scores["负面"]["exact_match"] == 0.0
    # ROUGE-L: 1, 0.5 (正面 vs 负面 share 面), 1
    assert scores["all"] == {"rouge_l_f1_char": 0.8333, "exact_match": 0.6667, "scored": 3}


def test_batched_generation_equals_one_by_one(model_dir, tmp_path):
    """Left padding must not change greedy answers."""
    source = write_jsonl(tmp_path / "e.jsonl", BELLE)
    outs = []
    for batch in ("5", "1"):
        out = tmp_path / f"p{batch}.jsonl"
        generate_cli.run(_args(generate_cli, ["--model", str(model_dir), "--input", str(source), "--out", str(out),
                                              "--batch-size", batch, "--max-new-tokens", "5"]))
        outs.append([json.loads(x)["prediction"] for x in out.read_text(encoding="utf-8").splitlines()])
    assert outs[0] == outs[1]


def test_generate_reads_the_real_belle_file(model_dir, shared_data, tmp_path):
    out = tmp_path / "belle.jsonl"
    generate_cli.run(_args(generate_cli, ["--model", str(model_dir), "--input", str(shared_data / "sft/belle_eval_set.json"),
                                          "--out", str(out), "--limit", "3", "--max-new-tokens", "4"]))
    records = [json.loads(x) for x in (shared_data / "sft/belle_eval_set.json").read_text(encoding="utf-8").splitlines()[:3]]
    _check_predictions(out, records)


def test_chat_streams_and_keeps_history(model_dir, monkeypatch, capsys):
    seen = []
    real = chat_cli.fit_history

    def spy(turns, user, encode, budget):
        history, ids = real(turns, user, encode, budget)
        seen.append((len(history), ids))
        return history, ids

    monkeypatch.setattr(chat_cli, "fit_history", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n再见\n/reset\n你好\n"))
    assert chat_cli.run(_args(chat_cli, ["--model", str(model_dir), "--max-new-tokens", "4"])) == 0
    assert [n for n, _ in seen] == [0, 1, 0]  # second turn carries the first; /reset clears it
    assert seen[2][1] == seen[0][1]
    tok = load_tokenizer(model_dir)
    assert "[INST] 再见 [/INST]" in tok.decode(seen[1][1])
    assert capsys.readouterr().out.count("\n") >= 3  # a streamed answer (ended by a newline) per turn


def test_answer_health_signs():
    from sft.answer_health import health, health_by_class, is_looping, repetition, switched_language

    prose = "中国科学院的研究人员今天发布了一个新的大语言模型，它在中文理解和写作上都有明显进步。"
    assert repetition(prose) < 0.1 and not is_looping(prose)
    assert is_looping("我喜欢北京。" * 10) and repetition("我喜欢北京。" * 10) > 0.8
    assert not is_looping("好好好好好")  # too short to tell
    assert switched_language("中国的首都是哪里？", "The capital of China is Beijing.")
    assert not switched_language("中国的首都是哪里？", "北京。")
    assert switched_language("What is the capital of China?", "中国的首都是北京，一座历史悠久的城市。")
    code = "下面是程序：\n```python\nimport random\nprint([random.randint(1, 10) for _ in range(5)])\n```"
    assert not switched_language("写一个生成五个随机数的 Python 程序。", code)  # the code block is left out
    assert not switched_language("1+1=?", "2")  # no letters: nothing to tell
    rows = [{"class": "math", "prediction": "2", **health("1+1=?", "2", True)},
            {"class": "math", "prediction": "我喜欢北京。" * 10, **health("1+1等于几？", "我喜欢北京。" * 10, False)}]
    by_class = health_by_class(rows)
    assert by_class["math"] == {"answers": 2, "unfinished": 0.5, "looping": 0.5, "language_switch": 0.0,
                                "mean_chars": 30.5}
    assert by_class["all"] == by_class["math"]


NEW = 6  # new tokens per answer in the stopping tests


def _raw_answers(model, tok, prompts) -> list[list[int]]:
    """Greedy answers with no stop at all: NEW tokens each."""
    import torch

    with torch.no_grad():
        return [model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                               pad_token_id=tok.eos_token_id)[0, len(ids):].tolist() for ids in prompts]


@pytest.fixture(scope="module")
def stopping_model(model_dir, tmp_path_factory):
    """The tiny model with its head's EOS row made a copy (0.1% larger) of a token one prompt's answer
    has and another's has not: some answers end early, others run to the limit. (folder, items, prompts)"""
    import shutil

    import torch

    from sft.data import load_prompts
    from sft.generate import encode_prompts, load_model

    model, tok, spec = load_model(model_dir)
    items = load_prompts(write_jsonl(tmp_path_factory.mktemp("stop") / "e.jsonl", BELLE))
    prompts = encode_prompts(tok, spec, items)
    before = _raw_answers(model, tok, prompts)
    marker = next(t for t in before[0] + [t for a in before for t in a] if any(t not in a for a in before))
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight[marker] * 1.001
    folder = tmp_path_factory.mktemp("stopping") / "model"
    shutil.copytree(model_dir, folder)
    model.save_pretrained(folder)
    return folder, items, prompts


def test_unfinished_answers_are_those_that_never_reached_a_stop_id(stopping_model):
    """`finished` against an oracle: the same greedy generation without any stop, searched for a stop id."""
    from sft.generate import Sampling, generate_all, load_model
    from sft.templates import stop_ids

    folder, items, prompts = stopping_model
    model, tok, spec = load_model(folder)
    answers, finished = generate_all(model, tok, spec, items, Sampling(max_new_tokens=NEW, repetition_penalty=1.0))
    stops = set(stop_ids(tok, spec))
    expected = [any(t in stops for t in raw) for raw in _raw_answers(model, tok, prompts)]
    assert finished == expected and True in finished and False in finished, (finished, expected)


def test_generating_on_a_server_gives_the_local_answers(stopping_model, tmp_path):
    """`--server`: the prompts go to /v1/completions as token ids (here `sft serve` of the same
    folder); answers and finished flags equal local generation's, and a rerun asks nothing."""
    from helpers_serve import start_server

    folder, _, _ = stopping_model
    source = write_jsonl(tmp_path / "e.jsonl", BELLE)
    common = ["--model", str(folder), "--input", str(source), "--max-new-tokens", str(NEW), "--repetition-penalty", "1.0"]
    generate_cli.run(_args(generate_cli, [*common, "--out", str(tmp_path / "local.jsonl")]))
    server, url, _ = start_server(folder, max_context=512, max_concurrent=2)
    try:
        remote = [*common, "--out", str(tmp_path / "remote.jsonl"), "--server", url + "/v1", "--server-model", "tiny-zh",
                  "--workers", "3"]
        generate_cli.run(_args(generate_cli, remote))
        calls = (tmp_path / "remote.jsonl.calls.jsonl").read_text(encoding="utf-8")
        generate_cli.run(_args(generate_cli, remote))
        assert (tmp_path / "remote.jsonl.calls.jsonl").read_text(encoding="utf-8") == calls  # all cached
    finally:
        server.shutdown()
        server.server_close()
    local, served = ([json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
                     for name in ("local", "remote"))
    assert [(r["prediction"], r["finished"]) for r in served] == [(r["prediction"], r["finished"]) for r in local]
    assert {r["finished"] for r in local} == {True, False}
    scores = json.loads((tmp_path / "remote.scores.json").read_text(encoding="utf-8"))
    assert scores["server"] == url + "/v1"


def test_belle_reference_answers_look_healthy(shared_data):
    """The thresholds on real answers: none of BELLE's 631 reference answers loops, and the only
    language switches are translations (on purpose), unfenced code and one English article classified in Chinese."""
    from sft.answer_health import is_looping, switched_language

    rows = [json.loads(line) for line in (shared_data / "sft/belle_eval_set.json").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("std_answer")]
    assert len(rows) == 631 and not [r for r in rows if is_looping(r["std_answer"])]
    switched = [r["class"] for r in rows if switched_language(r["question"], r["std_answer"])]
    assert sorted(set(switched)) == ["classification", "code", "rewrite"] and len(switched) == 22


def test_a_conversation_keeps_its_earlier_turns_and_system_in_the_predictions():
    """So `evaluation judge --pairs-out` can turn verdicts on it into DPO pairs with the whole context."""
    from sft.data import Conversation, PromptItem, Turn
    from sft.generate import prediction_records

    items = [PromptItem(Conversation((Turn("你好", "你好！"), Turn("1+1等于几？", None)), system="你是数学老师。"), "2"),
             PromptItem(Conversation((Turn("大语言模型是什么？", None),)), None)]
    rows = prediction_records(items, ["2", "一种模型"], [True, True], TemplateSpec("chinese-alpaca-2"))
    assert rows[0]["question"] == "1+1等于几？" and rows[0]["history"] == [["你好", "你好！"]]
    assert rows[0]["system"] == "你是数学老师。"
    assert "history" not in rows[1] and "system" not in rows[1]  # single-turn rows are as before
