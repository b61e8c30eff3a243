"""`python -m evaluation judge`: an LLM judge over `sft generate` answers, through an OpenAI-compatible API.

The judge here is a small HTTP server in the test process that speaks the chat-completions wire
format and judges by a rule the test knows (an answer holding the reference is good), so every
grade, win and tie is predictable. It can also prefer the first answer whatever it is, fail
transiently, fail hard, or demand a key. Last, our own `sft serve` stands in as a real
OpenAI-compatible server.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from evaluation import judge_cli
from helpers_judge import block, serve_fake_judge
from zhllama.judge_prompts import read_grade, read_verdict, task_class
from zhllama.errors import UserError


@pytest.fixture()
def judge():
    with serve_fake_judge() as fake:
        yield fake


QUESTIONS = [("math", "3+4=?", "7"), ("math", "2*5=?", "10"), ("code", "写一个打印 hi 的程序", "print('hi')"),
             ("closed\xa0qa", "中国的首都是哪里？", "北京"), ("open qa", "如何学好中文？", "多读多写")]


def _answers(path: Path, predictions: list[str]) -> Path:
    rows = [{"id": i, "class": cls, "question": q, "input": "", "std_answer": ref, "prediction": p}
            for i, ((cls, q, ref), p) in enumerate(zip(QUESTIONS, predictions))]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _run(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    judge_cli.add_arguments(parser)
    args = parser.parse_args(list(argv) + ["--no-progress"])
    assert judge_cli.run(args) == 0
    return json.loads(Path(args.out).read_text(encoding="utf-8"))


def test_grades_per_class_through_retries_with_unreadable_replies_left_out(judge, tmp_path):
    answers = _answers(tmp_path / "a.jsonl", ["答案是 7", "答案是 12", "print('hi')", "UNREADABLE", "多读多写，多听多说"])
    judge.transient_failures = 3
    report = _run("--answers", str(answers), "--judge-url", judge.url, "--judge-model", "judge-x",
                  "--out", str(tmp_path / "r.json"), "--workers", "2")
    assert [r["score"] for r in report["items"]] == [9, 3, 9, None, 9]
    assert report["overall"] == {"items": 5, "graded": 4, "unparsed": 1, "mean": 7.5,
                                 "ci95": pytest.approx([4.56, 10.44], abs=0.01)}
    assert report["by_class"]["math"]["mean"] == 6.0 and report["by_class"]["closed qa"]["unparsed"] == 1
    assert len(judge.requests) == 5 + 3  # three 503s were retried
    sent = judge.requests[-1]["body"]
    assert judge.requests[-1]["path"] == "/v1/chat/completions" and sent["temperature"] == 0.0
    assert sent["model"] == "judge-x" and sent["messages"][0]["role"] == "system"
    assert report["made_by"]["judge"]["model"] == "judge-x" and len(report["made_by"]["prompts_sha256"]) == 64


def test_compare_asks_both_orders_so_a_judge_that_prefers_a_position_gives_ties(judge, tmp_path):
    ours = _answers(tmp_path / "ours.jsonl", ["7", "10", "不会", "北京", "不知道"])
    theirs = _answers(tmp_path / "theirs.jsonl", ["8", "9", "print('hi')", "北京", "不清楚"])
    argv = ["--answers", str(ours), "--versus", str(theirs), "--judge-url", judge.url, "--judge-model", "j"]
    report = _run(*argv, "--out", str(tmp_path / "fair.json"))
    assert [r["outcome"] for r in report["items"]] == ["win", "win", "loss", "tie", "tie"]
    assert report["overall"]["win_rate"] == 0.6 and report["overall"]["position_consistency"] == 1.0
    assert report["overall"]["longer_won"] == 1.0  # "10" beat "9", "print('hi')" beat "不会"; "7" vs "8" is even
    orders = {(block(m, "回答 A"), block(m, "回答 B")) for m in
              (r["body"]["messages"][-1]["content"] for r in judge.requests)}
    assert {("7", "8"), ("8", "7"), ("不会", "print('hi')"), ("print('hi')", "不会")} <= orders
    assert len(judge.requests) == 9  # two equal answers ("北京") make one question, asked once

    judge.prefer_first = True
    biased = _run(*argv, "--out", str(tmp_path / "biased.json"))
    assert {r["outcome"] for r in biased["items"]} == {"tie"}
    assert biased["overall"]["win_rate"] == 0.5 and biased["overall"]["position_consistency"] == 0.0
    assert biased["overall"]["longer_won"] is None  # nothing was decided


def test_verdicts_held_both_ways_become_dpo_pairs_that_sft_reads(judge, tmp_path):
    from sft.config import SFTData, SFTFile
    from sft.mixture import resolve_sources
    from sft.pairs import read_pairs

    ours = _answers(tmp_path / "ours.jsonl", ["7", "10", "不会", "北京", "不知道"])
    theirs = _answers(tmp_path / "theirs.jsonl", ["8", "9", "print('hi')", "北京", "不清楚"])
    for path in (ours, theirs):  # a multi-turn question, as `sft generate` writes it
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        rows[0].update(history=[["你好", "你好！"]], system="你是数学老师。")
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pairs_file = tmp_path / "pairs.jsonl"
    argv = ["--answers", str(ours), "--versus", str(theirs), "--judge-url", judge.url, "--judge-model", "j",
            "--pairs-out", str(pairs_file)]
    report = _run(*argv, "--out", str(tmp_path / "r.json"))
    assert [r["outcome"] for r in report["items"]] == ["win", "win", "loss", "tie", "tie"]
    pairs = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines()]
    assert [(p["instruction"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("3+4=?", "7", "8"), ("2*5=?", "10", "9"), ("写一个打印 hi 的程序", "print('hi')", "不会")]
    assert pairs[0]["history"] == [["你好", "你好！"]] and pairs[0]["system"] == "你是数学老师。"
    assert report["made_by"]["pairs_out"]["pairs"] == 3
    (conversations, _, _, _), = read_pairs(resolve_sources(SFTData(files=[SFTFile(str(pairs_file))])))
    chosen, rejected = conversations[0]
    assert [t.user for t in chosen.turns] == ["你好", "3+4=?"] and chosen.system == "你是数学老师。"
    assert (chosen.turns[-1].assistant, rejected.turns[-1].assistant) == ("7", "8")

    judge.prefer_first = True  # a judge that prefers a position holds no preference both ways: no pairs
    _run(*argv, "--out", str(tmp_path / "biased.json"))
    assert pairs_file.read_text(encoding="utf-8") == ""


def test_grades_become_kto_examples_that_sft_reads(judge, tmp_path):
    from sft.config import SFTData, SFTFile
    from sft.kto import read_examples
    from sft.mixture import resolve_sources

    answers = _answers(tmp_path / "a.jsonl", ["答案是 7", "答案是 12", "print('hi')", "UNREADABLE", "多读多写，多听多说"])
    kto_file = tmp_path / "judged.jsonl"
    report = _run("--answers", str(answers), "--judge-url", judge.url, "--judge-model", "j", "--out",
                  str(tmp_path / "r.json"), "--kto-out", str(kto_file), "--kto-threshold", "8")
    examples = [json.loads(line) for line in kto_file.read_text(encoding="utf-8").splitlines()]
    assert [(e["output"], e["kto_tag"], e["score"]) for e in examples] == [  # grades 9, 3, 9, unreadable, 9
        ("答案是 7", True, 9), ("答案是 12", False, 3), ("print('hi')", True, 9), ("多读多写，多听多说", True, 9)]
    assert report["made_by"]["kto_out"] == {"file": str(kto_file), "threshold": 8, "desirable": 3, "undesirable": 1}
    (records, _, _, _), = read_examples(resolve_sources(SFTData(files=[SFTFile(str(kto_file))])))
    assert [(conv.turns[-1].user, conv.turns[-1].assistant, good) for (conv, good), in records][:2] == [
        (QUESTIONS[0][1], "答案是 7", True), (QUESTIONS[1][1], "答案是 12", False)]


def test_a_stopped_run_asks_only_what_is_missing_when_rerun(judge, tmp_path):
    answers = _answers(tmp_path / "a.jsonl", ["7", "10", "print('hi')", "北京", "多读多写"])
    argv = ["--answers", str(answers), "--judge-url", judge.url, "--judge-model", "j", "--workers", "1",
            "--out", str(tmp_path / "r.json")]
    judge.fail_hard_after = 3
    with pytest.raises(UserError, match="HTTP 400: .*prompt is longer than the context"):
        _run(*argv)
    assert not (tmp_path / "r.json").exists() and len(judge.requests) == 4  # nothing asked after the failure
    assert len((tmp_path / "r.json.calls.jsonl").read_text().splitlines()) == 3
    with (tmp_path / "r.json.calls.jsonl").open("a") as fh:
        fh.write('{"key": "torn')  # a run killed mid-write
    judge.fail_hard_after, judge.requests = None, []
    report = _run(*argv)
    assert len(judge.requests) == 2 and report["overall"]["mean"] == 9.0
    judge.requests = []
    assert _run(*argv) == report and judge.requests == []  # everything answered: nothing asked


def test_the_api_key_is_sent_and_never_written(judge, tmp_path, monkeypatch):
    answers = _answers(tmp_path / "a.jsonl", ["7"] * 5)
    judge.required_key = "sk-secret-123"
    argv = ["--answers", str(answers), "--judge-url", judge.url, "--judge-model", "j", "--out", str(tmp_path / "r.json")]
    with pytest.raises(UserError, match="HTTP 401: .*Incorrect API key"):
        _run(*argv)
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-123")
    _run(*argv, "--api-key-env", "JUDGE_KEY")
    assert judge.requests[-1]["auth"] == "Bearer sk-secret-123"
    for written in tmp_path.iterdir():
        assert "sk-secret" not in written.read_text(encoding="utf-8"), written


def test_bad_settings_and_files_are_reported_together(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "prediction": "p"}\nnot json\n{"question": "q"}\n{"question": "q", '
                   '"prediction": "p", "class": 3}\n[1]\n{"question": "q", "prediction": "p", "history": [["u"]]}\n',
                   encoding="utf-8")
    with pytest.raises(UserError) as err:
        _run("--answers", str(bad), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j",
             "--out", str(tmp_path / "r.json"))
    assert all(f"bad.jsonl:{n}" in str(err.value) for n in (2, 3, 4, 5, 6)) and "bad.jsonl:1" not in str(err.value)
    assert "history (a list of [user, assistant] pairs)" in str(err.value)
    with pytest.raises(UserError, match="--pairs-out: needs --versus"):
        _run("--answers", str(bad), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j",
             "--out", str(tmp_path / "r.json"), "--pairs-out", str(tmp_path / "p.jsonl"))
    with pytest.raises(UserError) as err:
        _run("--answers", str(bad), "--versus", str(bad), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j",
             "--out", str(tmp_path / "r.json"), "--kto-out", str(tmp_path / "k.jsonl"), "--kto-threshold", "11")
    assert "--kto-out: not with --versus" in str(err.value) and "--kto-threshold: a grade from 1 to 10" in str(err.value)
    with pytest.raises(UserError) as err:
        _run("--answers", str(bad), "--versus", str(tmp_path / "none.jsonl"), "--judge-url", "localhost:8000",
             "--judge-model", "j", "--out", str(tmp_path), "--workers", "0", "--api-key-env", "ZHLLAMA_NO_SUCH_VAR")
    message = str(err.value)
    for expected in ("--versus", "http:// or https://", "ZHLLAMA_NO_SUCH_VAR", "--workers", "is a folder"):
        assert expected in message, expected


def test_compared_files_must_answer_the_same_questions(tmp_path):
    ours = _answers(tmp_path / "ours.jsonl", ["7"] * 5)
    theirs = tmp_path / "theirs.jsonl"
    rows = [json.loads(line) for line in ours.read_text(encoding="utf-8").splitlines()][:4]
    rows[1]["question"] = "另一个问题"
    theirs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError) as err:
        _run("--answers", str(ours), "--versus", str(theirs), "--judge-url", "http://127.0.0.1:9/v1",
             "--judge-model", "j", "--out", str(tmp_path / "r.json"))
    assert "id '4' is not in the other file" in str(err.value) and "id '1' has two different questions" in str(err.value)
    theirs.write_text(ours.read_text(encoding="utf-8") + ours.read_text(encoding="utf-8").splitlines()[0] + "\n",
                      encoding="utf-8")
    with pytest.raises(UserError, match=r"theirs.jsonl:6: id '0' again \(first at .*theirs.jsonl:1\)"):
        _run("--answers", str(ours), "--versus", str(theirs), "--judge-url", "http://127.0.0.1:9/v1",
             "--judge-model", "j", "--out", str(tmp_path / "r.json"))


def test_limit_judges_the_first_answers_against_the_same_questions(judge, tmp_path):
    ours = _answers(tmp_path / "ours.jsonl", ["7", "10", "不会", "北京", "不知道"])
    theirs = _answers(tmp_path / "theirs.jsonl", ["8", "9", "print('hi')", "北京", "不清楚"])
    report = _run("--answers", str(ours), "--versus", str(theirs), "--judge-url", judge.url, "--judge-model", "j",
                  "--out", str(tmp_path / "r.json"), "--limit", "2")
    assert [r["outcome"] for r in report["items"]] == ["win", "win"] and len(judge.requests) == 4


def test_verdicts_are_read_from_the_last_verdict_line():
    assert read_grade("评分：1 最差，评分：10 最好。\n评分：7") == 7
    assert read_grade("**评分：** 8") == 8 and read_grade("Score: 6.5") == 6.5
    assert read_grade("评分：11") is None and read_grade("还行") is None
    assert read_verdict("A 更详细，但 B 正确。\n结论：B") == "B" and read_verdict("结论：平") == "tie"
    assert read_verdict("Verdict: tie") == "tie" and read_verdict("结论：C") is None
    assert task_class("closed\xa0qa") == task_class("Closed QA") == "closed qa" and task_class(None) == "all"


def test_our_own_server_as_the_judge_speaks_the_same_protocol(tmp_path):
    """A real OpenAI-compatible server (`sft serve`, a random tiny model): the calls go through, and
    a judge that never gives a verdict is a clear error with its replies kept for reading."""
    from helpers_serve import start_server, tiny_export

    server, url, _ = start_server(tiny_export(tmp_path / "model"), max_context=4096, max_concurrent=2)
    try:
        answers = _answers(tmp_path / "a.jsonl", ["7", "10", "print('hi')", "北京", "多读多写"])
        with pytest.raises(UserError, match="no readable verdict at all"):
            _run("--answers", str(answers), "--judge-url", url + "/v1", "--judge-model", "tiny-zh",
                 "--max-tokens", "16", "--out", str(tmp_path / "r.json"), "--limit", "2")
    finally:
        server.shutdown()
        server.server_close()
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["overall"]["items"] == report["overall"]["unparsed"] == 2
    assert all(isinstance(r["reply"], str) for r in report["items"])
