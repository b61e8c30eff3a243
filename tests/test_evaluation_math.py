"""`python -m evaluation math`: sets in their layouts, numbers read off answers, prompts, voting, the CLI."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from fractions import Fraction

import pytest
from helpers_reading import input_dependent as _input_dependent
from helpers_sft import load_tokenizer, write_jsonl

from evaluation.math_data import read_math_set
from evaluation.math_eval import (FORMAT, MathPrompt, base_text, build_prompts, chat_messages, exemplars_for, scored_item,
                                  solution_text, summary)
from zhllama.errors import UserError
from zhllama.math_answer import completion_number, marked_number

ROOT_ARGS = [sys.executable, "-m", "evaluation", "math"]
GSM = [  # GSM8K's layout: a worked solution with calculator notes, the number after ####
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7"},
    {"question": "A pen costs $2. How much do 6 pens cost?", "answer": "6 pens cost 6*2=<<6*2=12>>12 dollars.\n#### 12"},
    {"question": "Sara read 1,000 pages and then 200 more. How many pages?", "answer": "1000+200=1200\n#### 1,200"},
    {"question": "Half of 9 is?", "answer": "9/2=4.5\n#### 4.5"},
]


def test_sets_in_every_layout_read_as_numbers_worked_solutions_and_categories(tmp_path, shared_data):
    gsm = read_math_set(write_jsonl(tmp_path / "gsm.jsonl", GSM))
    assert [i.answer for i in gsm.items] == [7, 12, 1200, Fraction(9, 2)] and gsm.language == "en"
    assert gsm.items[0].reasoning == "He has 3+4=<<3+4=7>>7 apples." and gsm.items[2].final == "1,200"
    assert [i.key for i in gsm.items] == ["1", "2", "3", "4"]  # no ids: the line
    cmath = read_math_set(write_jsonl(tmp_path / "cmath.jsonl", [
        {"id": "c1", "grade": 2, "question": "小明有5个苹果，吃了2个，还剩几个？", "golden": "3"},
        {"id": "c2", "grade": 3, "question": "一支笔2元，5支笔多少元？", "golden": "10"}]))
    assert [(i.key, i.answer, i.reasoning, i.category) for i in cmath.items] == [("c1", 3, "", "2"), ("c2", 10, "", "3")]
    assert cmath.language == "zh"
    (tmp_path / "mgsm_zh.tsv").write_text("鸭子每天下16个蛋，卖掉9个，剩几个？\t7\n一件衣服50元，打八折多少元？\t40\n",
                                          encoding="utf-8")
    assert [i.answer for i in read_math_set(tmp_path / "mgsm_zh.tsv").items] == [7, 40]
    boxed = tmp_path / "math.json"
    boxed.write_text(json.dumps([{"problem": "1/2+1/4?", "answer": "So it is $\\boxed{\\frac{3}{4}}$.", "level": "L1"}]))
    assert read_math_set(boxed).items[0].answer == Fraction(3, 4)
    belle = read_math_set(shared_data / "sft" / "belle_eval_set.json", {"class": "math"})  # worked answers, no ids
    assert len(belle.items) == 75 and belle.left_out == 925 and belle.items[0].answer == 52 and belle.language == "zh"


def test_a_bad_file_reports_every_problem_with_its_place(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "1+1?", "answer": "2", "id": "a"}\n{oops\n{"answer": "3"}\n'
                    '{"question": "How many?", "answer": "many"}\n["x"]\n{"question": "2+2?", "answer": "4", "id": "a"}\n',
                    encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_math_set(path)
    text = str(e.value)
    assert "6 problem(s)" in text or "5 problem(s)" in text
    for where in (f"{path}:2: not JSON", f"{path}:3: no question", f"{path}:4.answer: no number",
                  f"{path}:5: expected an object", "id 'a' is given twice"):
        assert where in text, where


def read_math_set_item():
    from evaluation.math_data import MathItem

    return MathItem("k", "q", Fraction(8), "", "8")


def test_numbers_are_read_as_the_grpo_reward_reads_them():
    from sft.rewards import math_reward

    cases = [("3+4=7, so #### 7", 7, 7), ("#### 7\n\n#### 9 more", 7, 7), ("答案：1,200元", 1200, 1200), ("It is \\boxed{\\frac{1}{2}} or 3", Fraction(1, 2),
             Fraction(1, 2)), ("first 5 then 8", None, 8), ("答案是 ７", 7, 7), ("no number", None, None),
             ("Answer: 3 boxes of 4 make 12", None, 12), ("so the answer is 12. Check: 3 * 4 = 12", 12, 12),
             ("Final answer: 1/2, not 3", Fraction(1, 2), Fraction(1, 2))]
    assert scored_item(MathPrompt(read_math_set_item(), [1], 0, ()), ["<think>答案：3</think>答案：8"])["numbers"] == ["8"]
    for text, marked, read in cases:
        assert marked_number(text) == marked and completion_number(text) == read, text
        assert math_reward(text, "#### 8") == float(read == 8)


def test_the_english_prompt_is_lm_evals_gsm8k_layout(tmp_path):
    items = read_math_set(write_jsonl(tmp_path / "gsm.jsonl", GSM)).items
    assert base_text("en", "How many?", items[:2]) == (
        f"Question: {GSM[0]['question']}\nAnswer: {GSM[0]['answer']}\n\n"
        f"Question: {GSM[1]['question']}\nAnswer: {GSM[1]['answer']}\n\nQuestion: How many?\nAnswer:")
    zh = read_math_set(write_jsonl(tmp_path / "zh.jsonl", [{"question": "二加三？", "answer": "2+3=5\n#### 5"}])).items
    assert base_text("zh", "四加一？", zh) == "问题：二加三？\n解答：2+3=5\n答案：5\n\n问题：四加一？\n解答："
    turns = chat_messages("zh", "四加一？", zh)  # a chat model: exemplars as earlier turns, each asked alike
    assert [t["role"] for t in turns] == ["user", "assistant", "user"] and turns[1]["content"] == "2+3=5\n答案：5"
    assert turns[0]["content"] == "二加三？\n" + FORMAT["zh"]["instruction"] and turns[2]["content"].startswith("四加一？\n")


def test_exemplars_are_the_same_for_every_question_and_never_the_question_itself(tmp_path):
    items = read_math_set(write_jsonl(tmp_path / "gsm.jsonl", GSM)).items
    first = exemplars_for(items, 2, 0, None)
    assert all(exemplars_for(items, 2, 0, other) == first for other in items if other not in first)
    for asked in first:
        assert asked not in exemplars_for(items, 2, 0, asked) and len(exemplars_for(items, 2, 0, asked)) == 2
    assert exemplars_for(items, 2, 1, None) != first or exemplars_for(items, 2, 2, None) != first  # the seed chooses


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_final_answer_is_read_in_the_tokens_a_model_writes_it_in(tmp_path, language):
    """After the reasoning and the mark, the final number's tokens are those of the whole text: with a
    SentencePiece tokenizer "#### 7" is "##", "##", "▁7"; splitting after "#### " would ask for a "7" the model
    never writes there."""
    from engine.tiny import DEFAULT_TEXT, make_tiny_tokenizer
    from evaluation.math_eval import reference_requests

    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in GSM * 20]  # numbers as pieces: "▁7"
    tok = load_tokenizer(make_tiny_tokenizer(tmp_path / "tok", DEFAULT_TEXT + texts))
    rows = GSM if language == "en" else [{"question": "小明有3个苹果，又买了4个，一共有几个？", "answer": "3+4=7\n#### 7"}] * 2
    math_set = read_math_set(write_jsonl(tmp_path / "set.jsonl", rows))
    prompts = build_prompts(tok, math_set, math_set.items, True, 1, 0, 400, False)
    for prompt, (solution, final) in zip(prompts, reference_requests(tok, prompts, language, 512)):
        lead = " " if language == "en" else ""
        whole = tok(prompt.rendered + lead + solution_text(prompt.item, language)).input_ids
        assert solution.prompt + solution.answer == whole
        assert final.prompt + final.answer == whole and tok.decode(final.answer).strip() == prompt.item.final


def _prompt(items, n):
    return MathPrompt(items[n], [1, 2, 3], 0, ())


def test_samples_are_voted_and_scored_per_answer_and_per_category(tmp_path):
    items = read_math_set(write_jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "question": "q1", "golden": "7", "grade": 1}, {"id": "b", "question": "q2", "golden": "12", "grade": 1},
        {"id": "c", "question": "q3", "golden": "5", "grade": 2}])).items
    rows = [scored_item(_prompt(items, 0), ["#### 7", "I think 8", "答案：7 个"]),  # vote 7; 2 of 3 right, 2 marked
            scored_item(_prompt(items, 1), ["12 or 13", "答案：13", "13 then 12"]),  # a tie of 13 and 12: 13 first
            scored_item(MathPrompt(items[2], None, 0, ()), None)]  # too long
    assert [r["vote"] for r in rows[:2]] == ["7", "13"] and [r["correct"] for r in rows] == [True, False, False]
    assert rows[1]["right"] == [False, False, True] and rows[1]["strict"] == [False, False, False]
    got = summary(rows, 3)
    assert got["accuracy"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 3, abs=1e-3)
    assert got["strict"] == pytest.approx(100 * (2 / 3) / 3, abs=1e-3) and got["marked"] == pytest.approx(100 / 3, abs=1e-3)
    assert got["maj"] == pytest.approx(100 / 3, abs=1e-3) and got["pass"] == pytest.approx(200 / 3, abs=1e-3)
    assert got["too_long"] == 1 and got["by_category"]["2"]["accuracy"] == 0 and got["by_category"]["1"]["maj"] == 50


@pytest.fixture(scope="module")
def tiny_math(tmp_path_factory):
    from engine.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("math")
    zh = [{"id": f"z{i}", "question": q, "answer": f"{a}\n#### {n}"} for i, (q, a, n) in enumerate([
        ("小明有3个苹果，又买了4个，一共有几个？", "3+4=7", 7), ("一支笔2元，6支笔多少元？", "6×2=12", 12),
        ("书架上有10本书，拿走3本，还剩几本？", "10-3=7", 7), ("一天有24小时，两天有几小时？", "24×2=48", 48),
        ("5个同学每人有2支笔，一共几支？", "5×2=10", 10), ("妈妈买了8个梨，吃了一半，还剩几个？", "8÷2=4", 4),
        ("一年有12个月，半年有几个月？", "12÷2=6", 6)])]
    return _input_dependent(make_tiny_model(root / "model")), write_jsonl(root / "zh.jsonl", zh), root


def _math(model, data, out, *extra):
    return subprocess.run(ROOT_ARGS + ["--model", str(model), "--set", f"zh={data}", "--out", str(out),
                                       "--max-new-tokens", "8", "--no-progress", *extra], capture_output=True, text=True)


def test_greedy_answers_in_batches_equal_answers_one_at_a_time(tiny_math):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.math_generate import generate_answers

    model_dir, data, root = tiny_math
    run = _math(model_dir, data, root / "g.json", "--shots", "2", "--batch-size", "3")
    assert run.returncode == 0, run.stderr
    result = json.loads((root / "g.json").read_text())["sets"]["zh"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    math_set = read_math_set(data)
    prompts = build_prompts(tokenizer, math_set, math_set.items, True, 2, 0, 504, False)
    settings = argparse.Namespace(temperature=0.0, samples=1, max_new_tokens=8, batch_size=1, device="cpu", seed=0)
    alone = [generate_answers(model, tokenizer, [p], settings, ["问题："])[0][0].split("问题：")[0] for p in prompts]
    assert [i["answers"][0] for i in result["items"]] == alone  # sorted by length in batches, put back
    assert all(i["shots"] == 2 and i["key"] not in () for i in result["items"]) and len(set(alone)) > 1
    # the reference read without generating: each worked solution's bits after its prompt, in one forward, and
    # whether greedy decoding writes the final number after the prompt, the reasoning and 答案：
    import math

    for prompt, item in zip(prompts, result["items"]):
        solution = f"{prompt.item.reasoning}\n答案：{prompt.item.final}"
        whole = tokenizer(prompt.rendered + solution).input_ids
        assert whole[:len(prompt.ids)] == prompt.ids
        with torch.no_grad():
            logps = model(torch.tensor([whole])).logits[0, :-1].log_softmax(-1)
        picked = logps[len(prompt.ids) - 1:].gather(1, torch.tensor(whole[len(prompt.ids):])[:, None])
        assert item["solution_bits"] == pytest.approx(-float(picked.sum()) / math.log(2), rel=1e-4)
        assert item["solution_chars"] == len(solution)
        final = tokenizer(prompt.rendered + solution).input_ids
        cut = len(tokenizer(prompt.rendered + solution[:-len(prompt.item.final)]).input_ids)
        greedy = bool((logps[cut - 1:len(final) - 1].argmax(-1) == torch.tensor(final[cut:])).all())
        assert item["answer_greedy"] == greedy
    assert result["solution_bits_per_char"] == pytest.approx(
        sum(i["solution_bits"] for i in result["items"]) / sum(i["solution_chars"] for i in result["items"]), rel=1e-4)
    assert "reference solution: bits/char" in run.stdout


def test_sampled_answers_are_seeded_by_the_item_and_voted(tiny_math):
    model_dir, data, root = tiny_math
    runs = [_math(model_dir, data, root / f"s{n}.json", "--shots", "0", "--samples", "3", "--batch-size", str(n),
                  *extra) for n, extra in ((1, ()), (4, ("--max-items", "4")))]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    whole, part = (json.loads((root / f"s{n}.json").read_text())["sets"]["zh"] for n in (1, 4))
    # the same item's samples, whichever items were asked before it
    assert len(part["items"]) == 4 and part["items"][0]["answers"]
    by_key = {i["key"]: i["answers"] for i in whole["items"]}
    assert [i["answers"] for i in part["items"]] == [by_key[i["key"]] for i in part["items"]]
    assert any(len(set(i["answers"])) > 1 for i in whole["items"])  # sampled, not three greedy copies
    assert {"maj", "pass"} <= set(whole) and "maj | pass" in runs[0].stdout
    refused = _math(model_dir, data, root / "x.json", "--samples", "3", "--temperature", "0", "--shots", "9",
                    "--only", "classmath")
    assert refused.returncode == 2 and "every sample would be the greedy answer" in refused.stderr
    assert "--only 'classmath': expected FIELD=VALUE" in refused.stderr
    assert "--shots must be 0..8, got 9" in refused.stderr and not (root / "x.json").exists()


def _in_process(monkeypatch, model, data, out, answer_of, *extra):
    """A run whose answers come from ``answer_of(item key)``: what is scored, and where, is then known."""
    from evaluation import math_cli

    monkeypatch.setattr(math_cli, "_here", lambda args, tokenizer: (
        lambda name, prompts, stops: [[answer_of(p.item.key)] for p in prompts], None))
    parser = argparse.ArgumentParser()
    math_cli.add_arguments(parser)
    math_cli.run(parser.parse_args(["--model", str(model), "--set", f"zh={data}", "--out", str(out), "--no-progress",
                                    "--shots", "1", "--max-new-tokens", "8", *extra]))
    return json.loads(out.read_text())


def test_each_answer_is_scored_in_its_place_and_compared(tiny_math, monkeypatch, tmp_path):
    model, data, _ = tiny_math
    want = {r.key: r.answer for r in read_math_set(data).items}
    before = _in_process(monkeypatch, model, data, tmp_path / "a.json", lambda k: f"答案：{want[k] + (k in 'z0z3')}")
    assert before["sets"]["zh"]["accuracy"] == pytest.approx(500 / 7, abs=1e-3)
    assert [i["correct"] for i in before["sets"]["zh"]["items"]] == [k not in ("z0", "z3") for k in want]
    after = _in_process(monkeypatch, model, data, tmp_path / "b.json", lambda k: f"…所以是{want[k] + (k == 'z1')}",
                        "--compare", str(tmp_path / "a.json"))
    change = after["compare"]["sets"]["zh"]
    assert (change["gained"], change["lost"]) == (["z0", "z3"], ["z1"]) and after["sets"]["zh"]["marked"] == 0
    assert change["change"] == pytest.approx(100 / 7, abs=1e-2)
    card = subprocess.run([sys.executable, "-m", "evaluation", "scorecard", "--model", f"before={tmp_path / 'a.json'}",
                           "--model", f"after={tmp_path / 'b.json'}", "--out", str(tmp_path / "card.md")],
                          capture_output=True, text=True)
    assert card.returncode == 0, card.stderr
    row = json.loads((tmp_path / "card.md.json").read_text())["rows"]["math/zh/accuracy"]
    assert row["better"] == "higher" and row["models"]["after"]["change"] == pytest.approx(change["change"], abs=1e-3)
    with pytest.raises(UserError, match="shots was 1, now 0"):
        _in_process(monkeypatch, model, data, tmp_path / "c.json", str, "--shots", "0", "--compare", str(tmp_path / "a.json"))
    assert not (tmp_path / "c.json").exists()


def test_answers_from_a_server_equal_answers_made_here(tmp_path):
    from helpers_serve import start_server, tiny_export

    model = tiny_export(tmp_path / "model")
    data = write_jsonl(tmp_path / "zh.jsonl", [{"question": q, "answer": a} for q, a in (
        ("三加四等于几？", "3+4=7\n#### 7"), ("十减二等于几？", "10-2=8\n#### 8"), ("二乘五等于几？", "2×5=10\n#### 10"))])
    here = _math(model, data, tmp_path / "here.json", "--shots", "1")
    assert here.returncode == 0, here.stderr
    server, url, _ = start_server(model)
    try:
        remote = _math(model, data, tmp_path / "remote.json", "--shots", "1", "--server", f"{url}/v1",
                       "--server-model", "tiny-zh", "--workers", "2")
        assert remote.returncode == 0, remote.stderr
    finally:
        server.shutdown()
        server.server_close()
    answers = [[i["answers"] for i in json.loads((tmp_path / f).read_text())["sets"]["zh"]["items"]]
               for f in ("here.json", "remote.json")]
    assert answers[0] == answers[1]
    again = _math(model, data, tmp_path / "remote.json", "--shots", "1", "--server", f"{url}/v1", "--server-model", "tiny-zh")
    assert again.returncode == 0, again.stderr  # the server is gone: every answer came from the cache


def test_problems_the_training_data_holds_are_found_and_scored_apart(tiny_math, monkeypatch, tmp_path):
    from helpers_prepare import write_lines, write_manifest

    from evaluation import contamination_cli

    model, data, _ = tiny_math
    problems = {r.key: r for r in read_math_set(data).items}
    corpus = write_lines(tmp_path / "corpus.txt", [
        "今天的练习题：" + problems["z0"].question + "请写出过程。",  # two problems copied into training text
        "这是一段与题目无关的文字，讲的是春天的花和夏天的雨。" * 2,
        "习题 " + problems["z3"].question.replace("，", " ") + " 答案略。"])
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "c", "file": corpus}])
    out = tmp_path / "contamination.keys"
    parser = argparse.ArgumentParser()
    contamination_cli.add_arguments(parser)
    assert contamination_cli.run(parser.parse_args([str(manifest), "--math", f"zh={data}", "--out", str(out)])) == 0
    right = {"z0", "z1", "z2"}  # right on one copied problem and on two clean ones
    result = _in_process(monkeypatch, model, data, tmp_path / "r.json",
                         lambda k: f"答案：{problems[k].answer + (k not in right)}", "--contamination", f"{out}.json")
    zh = result["sets"]["zh"]
    assert {i["key"]: i["contamination"] for i in zh["items"]} == {k: "contaminated" if k in ("z0", "z3") else "clean"
                                                                   for k in problems}
    assert zh["contamination"]["contaminated"]["problems"] == 2 and zh["contamination"]["contaminated"]["accuracy"] == 50
    assert zh["contamination"]["clean"]["accuracy"] == pytest.approx(200 / 5, abs=1e-3)
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "1+1?", "answer": "2"}])
    with pytest.raises(UserError, match="set zh was checked in another file"):
        _in_process(monkeypatch, model, other, tmp_path / "x.json", str, "--contamination", f"{out}.json")


def test_base_numbers_of_a_math_set_equal_the_standalone_reference_and_line_up_in_the_scorecard(tiny_math, tmp_path):
    """`evaluation base --math` (a run's base before a vocabulary change) reads the reference solutions as
    `evaluation math` and `eval.math` do; the scorecard compares the two."""
    from evaluation import base_cli, math_cli

    model, data, _ = tiny_math
    for module, argv in ((base_cli, ["--math", f"zh={data}", "--math-shots", "2", "--math-items", "5",
                                     "--math-max-new-tokens", "8", "--out", str(tmp_path / "eval_base.json")]),
                         (math_cli, ["--set", f"zh={data}", "--shots", "2", "--max-items", "5", "--max-new-tokens", "8",
                                     "--out", str(tmp_path / "math.json"), "--no-progress"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert module.run(parser.parse_args(["--model", str(model), *argv])) == 0
    base = json.loads((tmp_path / "eval_base.json").read_text())["metrics"]
    alone = json.loads((tmp_path / "math.json").read_text())["sets"]["zh"]
    assert base["math/zh/solution_bits_per_char"] == pytest.approx(alone["solution_bits_per_char"], rel=1e-5)
    assert base["math/zh/answer_greedy"] == pytest.approx(alone["answer_greedy"]) and alone["problems"] == 5
    card = subprocess.run([sys.executable, "-m", "evaluation", "scorecard", "--model", f"base={tmp_path / 'eval_base.json'}",
                           "--model", f"now={tmp_path / 'math.json'}", "--out", str(tmp_path / "card.md")],
                          capture_output=True, text=True)
    assert card.returncode == 0, card.stderr
    row = json.loads((tmp_path / "card.md.json").read_text())["rows"]["math/zh/solution_bits_per_char"]
    assert row["better"] == "lower" and row["models"]["now"]["change"] == pytest.approx(0, abs=1e-4)
    assert row["models"]["now"]["differs"] == []  # measured alike: comparable
