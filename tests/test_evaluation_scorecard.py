"""`python -m evaluation scorecard`: results of the real evaluation commands, two models side by side."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from helpers_bench import small_ceval
from helpers_prepare import corpus_lines, write_lines, write_manifest
from helpers_reading import article as _article, input_dependent as _input_dependent, squad_file as _squad


def _command(module, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert module.run(parser.parse_args(argv)) == 0


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Results of choice, reading and long-context for a random tiny model (a) and another (b); and a's
    C-Eval one-shot (c: not comparable with a's zero-shot)."""
    from engine.tiny import make_tiny_model
    from evaluation import base_cli, choice_cli, long_context_cli, membership_cli, reading_cli

    root = tmp_path_factory.mktemp("scorecard")
    ceval = small_ceval(root / "ceval")
    poems = _squad(root / "poems.json", [
        _article("t0", "春眠不觉晓，处处闻啼鸟。", [("q0", "什么不觉晓？", "春眠"), ("q1", "哪里闻啼鸟？", "处处")]),
        _article("t1", "白日依山尽，黄河入海流。", [("q2", "什么入海流？", "黄河")])])
    corpus = write_lines(root / "corpus.txt", corpus_lines(300))
    manifest = write_manifest(root / "m.yaml", [{"name": "t", "file": corpus}], holdout=0.3, name="t")
    models = {"a": make_tiny_model(root / "a"), "b": _input_dependent(make_tiny_model(root / "b"))}
    for name, model in models.items():
        out = root / f"results_{name}"
        out.mkdir()
        _command(choice_cli, ["--model", str(model), "--benchmark", "ceval", "--data", str(ceval), "--shots",
                              "0", "--out", str(out / "ceval.json"), "--no-progress"])
        _command(reading_cli, ["--model", str(model), "--set", f"poems={poems}", "--shots", "0", "--max-new-tokens",
                               "4", "--out", str(out / "reading.json"), "--no-progress"])
        _command(long_context_cli, ["--model", str(model), "--lengths", "256,384", "--trials", "1", "--depths", "0,1",
                                    "--set", f"mix={manifest}", "--windows", "1",
                                    "--out", str(out / "long.json"), "--no-progress"])
        _command(base_cli, ["--model", str(model), "--set", f"mix={manifest}", "--benchmark", f"ceval={ceval}",
                            "--reading", f"poems={poems}", "--reading-shots", "0", "--block-size", "64",
                            "--out", str(out / "eval_base.json")])
        _command(membership_cli, ["--model", str(model), "--reading", f"poems={poems}", "--calibrate", str(manifest),
                                  "--calibrate-docs", "40", "--calibrate-unchecked", "--max-chars", "200",
                                  "--out", str(out / "membership.json"),
                                  "--no-progress"])
        (out / "notes.json").write_text('{"anything": 1}')
    (root / "results_c").mkdir()
    _command(choice_cli, ["--model", str(models["a"]), "--benchmark", "ceval", "--data", str(ceval), "--shots", "1",
                          "--out", str(root / "results_c" / "ceval.json"), "--no-progress"])
    return root


def _scorecard(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluation", "scorecard", *argv], capture_output=True, text=True)


def test_two_models_side_by_side_with_changes_and_what_cannot_be_compared(two_models):
    root = two_models
    got = _scorecard("--model", f"a={root / 'results_a'}", "--model", f"b={root / 'results_b'}",
                     "--model", f"c={root / 'results_c'}", "--out", str(root / "card.md"))
    assert got.returncode == 0, got.stderr
    card = json.loads((root / "card.md.json").read_text())
    rows = card["rows"]
    read = {n: json.loads((root / f"results_{n}" / "reading.json").read_text())["sets"]["poems"] for n in "ab"}
    f1 = rows["reading/poems/f1"]["models"]
    assert f1["a"]["value"] == read["a"]["f1"] and f1["b"]["change"] == pytest.approx(read["b"]["f1"] - read["a"]["f1"])
    longs = {n: json.loads((root / f"results_{n}" / "long.json").read_text()) for n in "ab"}
    found = rows["passkey/found@384"]["models"]["b"]
    assert found["change"] == pytest.approx(longs["b"]["passkey"]["by_length_and_depth"]["384"]["all"]
                                            - longs["a"]["passkey"]["by_length_and_depth"]["384"]["all"])
    ceval = rows["bench/ceval/accuracy"]["models"]["c"]  # one-shot against zero-shot: no change given
    assert ceval["change"] is None and ceval["differs"] == ["shots 1 (first: 0)"]
    assert got.stdout.count("not comparable [1]") == 4 and "measured otherwise: shots 1 (first: 0)" in got.stdout
    assert "skipped" in got.stdout and "notes.json: not the results of an evaluation command" in got.stdout
    base = {n: json.loads((root / f"results_{n}" / "eval_base.json").read_text())["metrics"] for n in "ab"}
    bpc = rows["eval/mix/bits_per_char"]  # from `evaluation base`; its C-Eval equals `evaluation choice`'s
    assert bpc["better"] == "lower" and bpc["models"]["b"]["change"] == pytest.approx(
        base["b"]["eval/mix/bits_per_char"] - base["a"]["eval/mix/bits_per_char"])
    bits = rows["reading/poems/answer_bits_per_char"]  # from `evaluation base --reading` and `evaluation reading`
    assert bits["better"] == "lower" and bits["models"]["a"]["value"] == read["a"]["answer_bits_per_char"]
    loss = rows["long/mix/loss@384"]  # lower is better
    assert loss["better"] == "lower" and loss["models"]["b"]["change"] == pytest.approx(
        longs["b"]["loss"]["mix"]["by_length"]["384"]["loss"] - longs["a"]["loss"]["mix"]["by_length"]["384"]["loss"])
    flagged = rows["membership/poems/flagged_min_k_plus_plus"]  # from `evaluation membership`: lower is better
    member = {n: json.loads((root / f"results_{n}" / "membership.json").read_text())["groups"]["poems"] for n in "ab"}
    assert flagged["better"] == "lower" and flagged["models"]["b"]["change"] == pytest.approx(
        member["b"]["flagged"]["min_k_plus_plus"] - member["a"]["flagged"]["min_k_plus_plus"])
    verdict = card["verdicts"]["b"]
    change = {m: r["models"]["b"]["change"] for m, r in rows.items() if r["models"].get("b", {}).get("change")}
    assert "long/mix/loss@384" in change and "bench/ceval/humanities" in change
    assert set(verdict["gained"]) == {m for m, c in change.items() if (c > 0) == (rows[m]["better"] == "higher")}
    assert set(verdict["forgot"]) == set(change) - set(verdict["gained"])
    assert verdict["gained"] and verdict["forgot"]  # both directions shown
    for metric in ("long/mix/loss@384", "bench/ceval/humanities"):
        mark = "▲" if metric in verdict["gained"] else "▼"
        assert f"| {metric} | {rows[metric]['better']} |" in got.stdout
        assert f"{rows[metric]['models']['b']['change']:+.4f} {mark})" in got.stdout
    assert (root / "card.md").read_text().startswith("| metric | better | a | b | c |")
    order = [list(rows).index(m) for m in ("eval/mix/bits_per_char", "bench/ceval/accuracy", "reading/poems/em",
                                           "long/mix/loss@256", "passkey/found@384",
                                           "membership/poems/flagged_min_k_plus_plus")]
    assert order == sorted(order)


def test_bad_inputs_are_all_reported(two_models, tmp_path):
    root = two_models
    (tmp_path / "other.json").write_text('{"x": 1}')
    (tmp_path / "broken.json").write_text("{")
    got = _scorecard("--model", f"a={root / 'results_a'}", "--model", f"b={tmp_path / 'other.json'}",
                     "--model", f"c={tmp_path / 'missing'}", "--model", f"d={tmp_path / 'broken.json'}")
    assert got.returncode == 2
    for problem in ("other.json: not the results of an evaluation command", "missing: no such file or folder",
                    "broken.json: not readable as JSON"):
        assert problem in got.stderr
    got = _scorecard("--model", f"a={root / 'results_a'}")
    assert got.returncode == 2 and "at least two models" in got.stderr
    clash = tmp_path / "clash.json"
    doc = json.loads((root / "results_a" / "ceval.json").read_text())
    clash.write_text(json.dumps(doc | {"accuracy": doc["accuracy"] + 0.5}))
    got = _scorecard("--model", f"a={root / 'results_a'}", "--model", f"a={clash}", "--model", f"b={root / 'results_b'}")
    assert got.returncode == 2 and "bench/ceval/accuracy given by" in got.stderr


def test_judge_grades_and_answer_scores_are_read():
    from types import SimpleNamespace

    from evaluation.judge import grade_report
    from evaluation.scorecard import kind_of

    calls = [{"key": f"k{i}", "answer": SimpleNamespace(where=f"f:{i}", id=i, task=task)}
             for i, task in enumerate(["math", "math", "rewrite"])]
    report = grade_report(calls, {"k0": "评分：8", "k1": "评分：6", "k2": "no grade"})
    report["made_by"] = {"judge": {"model": "judge-x"}, "prompts_sha256": "p", "limit": None}
    kind, flatten = kind_of(report)
    flat = flatten(report)
    assert kind == "evaluation judge (grades)" and flat["judge/math/grade"][0] == report["by_class"]["math"]["mean"]
    assert "judge/rewrite/grade" not in flat  # no readable grade: no value
    scores = {"metric": "character-level ROUGE-L F1 (mean over records with a reference)", "input": "belle.json",
              "records": 3, "sampling": {"temperature": 0}, "by_class": {
                  "all": {"rouge_l_f1_char": 0.25, "exact_match": 0.0, "scored": 2}}}
    kind, flatten = kind_of(scores)
    assert kind == "sft generate scores" and flatten(scores)["answers/all/rouge_l"][0] == 0.25
