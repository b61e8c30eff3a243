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
        assert {"id", "class", "question", "std_answer", "prediction", "rouge_l_f1_char", "template"} <= set(row)
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
