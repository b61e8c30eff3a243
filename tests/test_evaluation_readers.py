"""Benchmark readers, exact few-shot prompts, aggregation and bad input (no model needed)."""
from __future__ import annotations

import argparse

import pytest

from evaluation.benchmarks import load_benchmark, read_all_splits
from evaluation.prompts import build_prompt, continuations
from evaluation.results import aggregate, metrics_of, predictions
from helpers_bench import EN, ZH, small_ceval, write_ceval, write_cmmlu, write_mmlu
from zhllama.errors import UserError


def test_ceval_layout_reads_items_and_exemplars(tmp_path):
    bench = load_benchmark("ceval", small_ceval(tmp_path), "val", shots=2)
    assert bench.subjects == ["advanced_mathematics", "computer_network", "law"]
    assert [it.answer for it in bench.items] == ["B", "B", "A", "C", "D"]
    assert bench.items[0].choices == ("一", "二", "三", "四")
    assert bench.items[1].where.endswith("val/computer_network_val.csv:2")
    assert [ex.question for ex in bench.dev["law"]] == [ZH[4][0], ZH[5][0]]
    assert len(load_benchmark("ceval", tmp_path, "val", max_items_per_subject=1).items) == 3


def test_few_shot_prompts_are_exact(tmp_path):
    bench = load_benchmark("ceval", small_ceval(tmp_path), "val", shots=1)
    item = bench.items[0]  # advanced_mathematics: 一加一等于几？
    assert build_prompt("ceval", item, bench.dev[item.subject]) == (
        "以下是中国关于高等数学考试的单项选择题，请选出其中的正确答案。\n\n"
        "太阳从哪个方向升起？\nA. 西\nB. 东\nC. 南\nD. 北\n答案：B\n\n"
        "一加一等于几？\nA. 一\nB. 二\nC. 三\nD. 四\n答案："
    )
    assert build_prompt("ceval", item, []) == (
        "以下是中国关于高等数学考试的单项选择题，请选出其中的正确答案。\n\n一加一等于几？\nA. 一\nB. 二\nC. 三\nD. 四\n答案：")
    mmlu = load_benchmark("mmlu", write_mmlu(tmp_path / "mmlu", {"dev": {"global_facts": EN[:1]},
                                                                  "val": {"global_facts": EN[1:2]}}), "val", shots=1)
    assert build_prompt("mmlu", mmlu.items[0], mmlu.dev["global_facts"]) == (
        "The following are multiple choice questions (with answers) about global facts.\n\n"
        "What is two plus two?\nA. three\nB. five\nC. four\nD. six\nAnswer: C\n\n"
        "Which animal barks?\nA. dog\nB. cat\nC. fish\nD. bird\nAnswer:"
    )
    assert continuations("mmlu") == [" A", " B", " C", " D"] and continuations("ceval") == ["A", "B", "C", "D"]
    cmmlu = load_benchmark("cmmlu", write_cmmlu(tmp_path / "cmmlu", {"dev": {"arts": ZH[:1]}, "test": {"arts": ZH[1:2]}}),
                           "test", shots=0)
    assert build_prompt("cmmlu", cmmlu.items[0], []) == (
        "以下是关于艺术学的单项选择题，请直接给出正确答案的选项。\n\n中国的首都是哪里？\nA. 北京\nB. 上海\nC. 广州\nD. 深圳\n答案：")


def test_aggregation_per_subject_category_and_hard(tmp_path):
    bench = load_benchmark("ceval", small_ceval(tmp_path), "val")
    # items: adv_math B | net B, A | law C, D ; predict: B (right) | A (wrong), A (right) | C (right), A (wrong)
    picks = ["B", "A", "A", "C", "A"]
    lps = [[0.0 if letter == p else -5.0 for letter in "ABCD"] for p in picks]
    summary = aggregate(bench, predictions(bench, lps))
    assert summary["correct"] == 3 and summary["items"] == 5 and summary["accuracy"] == pytest.approx(0.6)
    assert summary["subjects"]["computer_network"] == {"accuracy": 0.5, "correct": 1, "items": 2}
    assert summary["subjects"]["advanced_mathematics"]["accuracy"] == 1.0
    assert summary["macro_accuracy"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    cats = summary["categories"]
    assert cats["STEM"] == {"accuracy": pytest.approx(2 / 3), "correct": 2, "items": 3}
    assert cats["Humanities"]["accuracy"] == 0.5 and cats["Hard"]["items"] == 1
    assert list(cats) == ["STEM", "Humanities", "Hard"]  # the benchmark's order; no item of Other here
    assert metrics_of("ceval", summary)["bench/ceval/stem"] == pytest.approx(2 / 3)


def test_cmmlu_and_mmlu_have_their_own_categories(tmp_path):
    from evaluation.subjects import CMMLU_CHINA_SPECIFIC, CMMLU_SUBJECTS, MMLU_CATEGORIES, MMLU_SUBJECTS

    assert [len(v) for v in MMLU_CATEGORIES.values()] == [18, 13, 12, 14]  # STEM, humanities, social, other
    assert len(MMLU_SUBJECTS) == len(set(MMLU_SUBJECTS)) == 57
    cmmlu_sizes = {c: sum(1 for _, cat in CMMLU_SUBJECTS.values() if cat == c) for c in
                   ("STEM", "Humanities", "Social Science", "Other")}
    assert cmmlu_sizes == {"STEM": 17, "Humanities": 13, "Social Science": 22, "Other": 15}
    assert len(CMMLU_CHINA_SPECIFIC) == 15 and CMMLU_CHINA_SPECIFIC <= set(CMMLU_SUBJECTS)

    cmmlu = load_benchmark("cmmlu", write_cmmlu(tmp_path / "cmmlu", {"dev": {"agronomy": ZH[5:]}, "test": {
        "chinese_history": ZH[:2], "college_mathematics": ZH[2:3], "agronomy": ZH[3:4]}}), "test")
    wrong = next(it for it in cmmlu.items if it.subject == "chinese_history")
    picks = ["D" if it is wrong else it.answer for it in cmmlu.items]  # every answer right but one
    assert wrong.answer != "D"
    summary = aggregate(cmmlu, predictions(cmmlu, [[0.0 if x == p else -5.0 for x in "ABCD"] for p in picks]))
    cats = summary["categories"]
    assert list(cats) == ["STEM", "Humanities", "Other", "China specific"]
    assert cats["Humanities"] == cats["China specific"] == {"accuracy": 0.5, "correct": 1, "items": 2}
    assert metrics_of("cmmlu", summary)["bench/cmmlu/china_specific"] == 0.5

    mmlu = load_benchmark("mmlu", write_mmlu(tmp_path / "mmlu", {"dev": {"virology": EN[3:]},
                                                                  "val": {"virology": EN[:1], "sociology": EN[1:2]}}), "val")
    summary = aggregate(mmlu, predictions(mmlu, [[0.0 if x == it.answer else -5.0 for x in "ABCD"] for it in mmlu.items]))
    assert list(summary["categories"]) == ["Social Science", "Other"] and summary["accuracy"] == 1.0


def _bad(tmp_path, mutate):
    root = small_ceval(tmp_path / "c")
    mutate(root)
    return root


@pytest.mark.parametrize("case, expected", [
    ("missing_column", "val/law_val.csv:1: missing column(s) ['answer']"),
    ("bad_answer", "val/law_val.csv:3: answer 'E' is not one of A, B, C, D"),
    ("empty_subject", "val/law_val.csv: subject 'law' has no questions"),
    ("dev_only", "subject(s) ['logic'] are in dev but not in val"),
])
def test_bad_input_one_clear_error_and_nothing_written(tmp_path, case, expected):
    def mutate(root):
        path = root / "val" / "law_val.csv"
        if case == "missing_column":
            path.write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n", encoding="utf-8")
        elif case == "bad_answer":
            path.write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,b,c,d,E\n", encoding="utf-8")
        elif case == "empty_subject":
            path.write_text("id,question,A,B,C,D,answer\n", encoding="utf-8")
        else:
            write_ceval(root, {"dev": {"logic": ZH[:1]}})

    root = _bad(tmp_path, mutate)
    with pytest.raises(UserError) as err:
        load_benchmark("ceval", root, "val", shots=1)
    assert expected in str(err.value)
    from evaluation import choice_cli

    out = tmp_path / "results.json"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    args = argparse.Namespace(model=str(tmp_path / "m"), tokenizer=None, benchmark="ceval", data=str(root), split="val",
                              shots=1, max_items_per_subject=None, subjects=None, batch_size=2, max_length=None,
                              device="cpu", dtype="auto", out=str(out), no_progress=True,
                              contamination=None)
    with pytest.raises(UserError) as err:
        choice_cli.run(args)
    assert expected in str(err.value)
    assert not out.exists() and list(tmp_path.glob("*.tmp*")) == []


def test_ceval_test_split_without_answers_says_to_use_val(tmp_path):
    write_ceval(tmp_path, {"dev": {"law": ZH[:1]}, "test": {"law": [("问题", "a", "b", "c", "d", "")]}})
    with pytest.raises(UserError, match=r"test/law_test.csv:2: answer '' .*score --split val"):
        load_benchmark("ceval", tmp_path, "test")


def test_shots_need_dev_exemplars(tmp_path):
    write_cmmlu(tmp_path, {"dev": {"arts": ZH[:1]}, "test": {"arts": ZH[1:3], "law": ZH[:1]}})
    with pytest.raises(UserError, match=r"\['law'\] are in test but have no dev file"):
        load_benchmark("cmmlu", tmp_path, "test", shots=1)
    assert len(load_benchmark("cmmlu", tmp_path, "test", shots=0).items) == 3
    write_cmmlu(tmp_path / "b", {"dev": {"arts": ZH[:1]}, "test": {"arts": ZH[1:3]}})
    with pytest.raises(UserError, match=r"--shots 2 but the dev split has fewer exemplars for \{'arts': 1\}"):
        load_benchmark("cmmlu", tmp_path / "b", "test", shots=2)


def test_cli_entry_point_lists_and_documents_commands(repo_root):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    top = subprocess.run([sys.executable, "-m", "evaluation", "--help"], cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert top.returncode == 0, top.stdout + top.stderr
    for command in ("choice", "base", "report", "contamination"):  # one aligned column, however long the name
        assert f"  {command:<13} python -m evaluation {command} --help" in top.stdout, top.stdout
    sub = subprocess.run([sys.executable, "-m", "evaluation", "choice", "--help"], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0 and "python -m evaluation choice --model DIR --benchmark ceval" in sub.stdout


@pytest.mark.parametrize("name", ["llama2c", "chinese_llama_alpaca_2"])
def test_answer_letters_are_single_tokens_for_real_llama_tokenizers(shared_data, tmp_path, name):
    from transformers import LlamaTokenizer

    from evaluation.choice import bench_prompts
    from evaluation.scorer import encode_requests

    path = str(shared_data / "tokenizers" / name / "tokenizer.model")
    tok = LlamaTokenizer(**LlamaTokenizer.convert_to_native_format(vocab_file=path), add_bos_token=True)
    ceval = load_benchmark("ceval", small_ceval(tmp_path / "c"), "val", shots=2)
    mmlu = load_benchmark("mmlu", write_mmlu(tmp_path / "m", {"dev": {"global_facts": EN[:2]},
                                                              "val": {"global_facts": EN}}), "val", shots=2)
    for bench, pieces in ((ceval, ["A", "B", "C", "D"]), (mmlu, ["▁A", "▁B", "▁C", "▁D"])):
        for req in encode_requests(tok, bench_prompts(bench), continuations(bench.name)):
            assert tok.convert_ids_to_tokens(req.letter_ids) == pieces
            assert req.ids[0] == tok.bos_token_id


def test_hub_records_become_the_same_items(monkeypatch):
    """The hub path's record shapes (no network: load_dataset is replaced by the hub's field layout)."""
    import datasets

    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        if name == "cais/mmlu":  # one config, subject field, choices list, answer index
            return [{"question": q, "subject": "global_facts", "choices": list(c), "answer": "ABCD".index(a)}
                    for q, *c, a in EN]
        return [{"id": i, "question": q, "A": c[0], "B": c[1], "C": c[2], "D": c[3], "answer": a, "explanation": ""}
                for i, (q, *c, a) in enumerate(ZH[:2])]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    mmlu = load_benchmark("mmlu", "hub", "val", shots=1)
    assert [it.answer for it in mmlu.items] == [q[-1] for q in EN] and mmlu.dev["global_facts"][0].question == EN[0][0]
    assert ("cais/mmlu", "all", "validation") in calls
    ceval = load_benchmark("ceval", "hub", "val", shots=2)
    assert len(ceval.subjects) == 52 and len(ceval.items) == 104 and ceval.items[0].where.startswith("hub:ceval/ceval-exam/")
    splits, files = read_all_splits("mmlu", "hub")  # the contamination check reads every split
    assert sorted(splits) == ["dev", "test", "val"] and [it.question for it in splits["test"]] == [q[0] for q in EN]
    assert files == [] and ("cais/mmlu", "all", "test") in calls
