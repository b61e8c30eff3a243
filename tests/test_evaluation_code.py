"""`python -m evaluation code`: HumanEval-layout sets read and checked, completions run in limited processes, pass@k
as Chen et al. define it, completions cut and extracted as lm-evaluation-harness does, results compared and put on
the scorecard, nothing run without --allow-execution."""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.code_data import CodeTask, read_code_set
from evaluation.code_eval import BASE_STOPS, pass_at_k, program_of
from evaluation.code_exec import PASSED, TIMED_OUT, check_program, run_program, run_programs
from zhllama.errors import UserError

REPO = Path(__file__).resolve().parents[1]
ADD = {"task_id": "t/add", "prompt": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
       "canonical_solution": "    return a + b\n"}
TWICE = {"task_id": "t/twice", "prompt": "import math\n\n\ndef twice(x):\n", "entry_point": "twice",
         "test": "def check(candidate):\n    assert candidate(4) == 8\n"}


def _write(path: Path, records: list, gz: bool = False) -> Path:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_a_set_is_read_plain_or_gzipped_and_every_bad_record_is_named_by_its_line(tmp_path):
    good = read_code_set(_write(tmp_path / "ok.jsonl.gz", [ADD, TWICE], gz=True))
    assert [t.key for t in good.tasks] == ["t/add", "t/twice"] and good.tasks[0].solution == ADD["canonical_solution"]
    assert good.tasks[1].solution is None
    bad = _write(tmp_path / "bad.jsonl", [ADD, "{not json", {**ADD, "task_id": "t/2", "entry_point": ""},
                                          {**ADD, "task_id": "t/3", "entry_point": "add me"},
                                          {**ADD, "task_id": "t/4", "test": "assert True"}, ADD, "[1, 2]"])
    with pytest.raises(UserError) as error:
        read_code_set(bad)
    text = str(error.value)
    for line, what in ((2, "not JSON"), (3, "entry_point must be non-empty"), (4, "is not a Python name"),
                       (5, "check(candidate)"), (6, "'t/add' again (first on line 1)"), (7, "a JSON object")):
        assert f"bad.jsonl:{line}: " in text and what in text, (line, what, text)


def test_programs_pass_fail_and_time_out_within_their_limits():
    assert run_program(check_program(ADD["prompt"], ADD["canonical_solution"], ADD["test"], "add")) == PASSED
    assert run_program(check_program(ADD["prompt"], "    return a - b\n", ADD["test"], "add")) == "failed: AssertionError"
    assert run_program("def f(:\n").startswith("failed: SyntaxError")
    assert run_program("x = bytearray(8 * 2**30)\n", memory_mb=512) == "failed: MemoryError"
    assert run_program("import sys\nsys.exit(0)\nassert False\n") == "failed: exited before the tests ran to their end"
    assert run_program("import sys\nwhile True:\n    sys.stderr.write('x' * 2**20)\n") == \
        "failed: wrote more than the output limit"
    start = time.monotonic()
    assert run_program("while True:\n    pass\n", timeout=1.0) == TIMED_OUT
    assert time.monotonic() - start < 5


def test_a_program_runs_in_an_empty_folder_that_goes_and_its_children_go_with_it(tmp_path):
    marker = f"zhllama-test-{os.getpid()}-{time.time_ns()}"
    source = ("import os, subprocess, sys\n"
              f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
              "assert sorted(os.listdir('.')) == ['program.py', 'stderr.txt'], os.listdir('.')\n"
              "open('left.txt', 'w').write(os.getcwd())\n"
              "raise RuntimeError(os.getcwd())\n")
    verdict = run_program(source)
    assert verdict.startswith("failed: RuntimeError: "), verdict
    folder = Path(verdict.removeprefix("failed: RuntimeError: "))
    assert not folder.exists()
    time.sleep(0.2)
    alive = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert alive == []


def test_verdicts_come_back_in_order_from_parallel_runs():
    sources = [f"assert {i} % 3 != 0\n" for i in range(12)]
    assert run_programs(sources, jobs=4) == [PASSED if i % 3 else "failed: AssertionError" for i in range(12)]


def test_pass_at_k_is_the_chance_that_one_of_k_samples_passes():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                draws = list(itertools.combinations(range(n), k))  # samples 0..c-1 pass
                want = sum(any(i < c for i in d) for d in draws) / len(draws)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)


def test_completions_are_cut_where_the_function_ends_and_chat_replies_give_their_code_block():
    task = CodeTask(**{k: v for k, v in {**TWICE, "key": TWICE["task_id"]}.items() if k != "task_id"})
    base = "    return 2 * x\n\n\ndef other():\n    pass\n# trailing\nprint(twice(3))\n"
    assert program_of(task, base, chat=False).startswith(TWICE["prompt"] + "    return 2 * x\n\n" + "\n\n" + "def check")
    assert run_program(program_of(task, base, chat=False)) == PASSED
    reply = "Sure:\n```python\ndef twice(x):\n    return math.prod([2, x])\n```\nIt doubles x."
    program = program_of(task, reply, chat=True)
    assert program.startswith("import math\n\ndef twice(x):") and run_program(program) == PASSED
    body_only = "```python\n    return x + x\n```"
    assert run_program(program_of(task, body_only, chat=True)) == PASSED
    assert all(stop.startswith("\n") for stop in BASE_STOPS)  # only lines at the left margin end a completion


@pytest.fixture(scope="module")
def humaneval():
    from evaluation.code_data import builtin_file
    from zhllama.pinned import FetchError

    try:
        return read_code_set(builtin_file("humaneval", log=lambda *_: None))
    except FetchError as exc:
        pytest.skip(f"HumanEval could not be fetched: {exc}")


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail(humaneval):
    tasks = humaneval.tasks[:40]
    assert len(humaneval.tasks) == 164 and humaneval.tasks[0].key == "HumanEval/0"
    right = run_programs([check_program(t.prompt, t.solution, t.test, t.entry_point) for t in tasks], jobs=2)
    assert right == [PASSED] * len(tasks)
    wrong = run_programs([check_program(t.prompt, "    return None\n", t.test, t.entry_point) for t in tasks], jobs=2)
    assert sum(v == PASSED for v in wrong) <= 2  # a task whose tests accept None for some inputs at most


def _run_cli(monkeypatch, model: Path, data: Path, out: Path, complete, *extra) -> dict:
    """A run whose completions come from ``complete(task key, sample)``: what is scored is then known."""
    from evaluation import code_cli

    def fake_here(args, tokenizer):
        return (lambda name, prompts, stops: [[complete(p.item.key, s) for s in range(args.samples)] for p in prompts],
                None)
    monkeypatch.setattr(code_cli, "_here", fake_here)
    parser = argparse.ArgumentParser()
    code_cli.add_arguments(parser)
    code_cli.run(parser.parse_args(["--model", str(model), "--set", f"mine={data}", "--out", str(out), "--no-progress",
                                    "--allow-execution", "--max-new-tokens", "16", *extra]))
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from engine.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("code")
    return make_tiny_model(root / "model"), _write(root / "mine.jsonl", [ADD, TWICE])


def test_results_count_passes_per_task_and_compare_with_another_model(tiny, monkeypatch, tmp_path):
    model, data = tiny
    good = {"t/add": "    return a + b\n", "t/twice": "    return 2 * x\n"}
    before = _run_cli(monkeypatch, model, data, tmp_path / "a.json",
                      lambda key, s: good[key] if (key, s) != ("t/twice", 1) else "    return x\n",
                      "--samples", "4", "--temperature", "0.8")
    mine = before["sets"]["mine"]
    assert [i["passed"] for i in mine["items"]] == [4, 3]
    assert mine["pass@1"] == pytest.approx(100 * (1 + 0.75) / 2, abs=1e-3) and "pass@10" not in mine
    assert mine["verdicts"] == {"passed": 7, "AssertionError": 1}
    after = _run_cli(monkeypatch, model, data, tmp_path / "b.json",
                     lambda key, s: "    return a * b\n" if key == "t/add" else good[key],
                     "--samples", "4", "--temperature", "0.8", "--compare", str(tmp_path / "a.json"))
    change = after["compare"]["sets"]["mine"]
    assert (change["gained"], change["lost"]) == ([], ["t/add"]) and change["change"] == pytest.approx(-37.5)
    card = subprocess.run([sys.executable, "-m", "evaluation", "scorecard", "--model", f"before={tmp_path / 'a.json'}",
                           "--model", f"after={tmp_path / 'b.json'}", "--out", str(tmp_path / "card.md")],
                          capture_output=True, text=True, cwd=REPO)
    assert card.returncode == 0, card.stderr
    row = json.loads((tmp_path / "card.md.json").read_text())["rows"]["code/mine/pass@1"]
    assert row["better"] == "higher" and row["models"]["after"]["change"] == pytest.approx(-37.5, abs=1e-3)
    with pytest.raises(UserError, match="samples was 4, now 1"):
        _run_cli(monkeypatch, model, data, tmp_path / "c.json", lambda key, s: "", "--compare", str(tmp_path / "a.json"))


def test_nothing_runs_without_allow_execution_and_a_real_model_is_scored(tiny, tmp_path):
    model, data = tiny
    base = [sys.executable, "-m", "evaluation", "code", "--model", str(model), "--set", f"mine={data}",
            "--out", str(tmp_path / "r.json"), "--max-new-tokens", "8", "--no-progress"]
    refused = subprocess.run(base + ["--set", "nope"], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "--allow-execution" in refused.stderr and "'nope'" in refused.stderr
    assert not (tmp_path / "r.json").exists()
    done = subprocess.run(base + ["--allow-execution"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())["sets"]["mine"]
    assert result["tasks"] == 2 and all(len(i["completions"]) == 1 for i in result["items"])
    assert sum(result["verdicts"].values()) == 2 and "| mine | 2 |" in done.stdout


def test_base_numbers_of_a_code_set_equal_the_standalone_reference_and_line_up_in_the_scorecard(tiny, tmp_path):
    """`evaluation base --code` (a run's base before a vocabulary change) reads the canonical solutions as
    `evaluation code` and `eval.code` do; the scorecard compares the two."""
    from evaluation import base_cli, code_cli

    model, data = tiny
    for module, argv in ((base_cli, ["--code", f"mine={data}", "--code-max-new-tokens", "16",
                                     "--out", str(tmp_path / "eval_base.json")]),
                         (code_cli, ["--set", f"mine={data}", "--max-new-tokens", "16", "--allow-execution",
                                     "--out", str(tmp_path / "code.json"), "--no-progress"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert module.run(parser.parse_args(["--model", str(model), *argv])) == 0
    base = json.loads((tmp_path / "eval_base.json").read_text())["metrics"]
    alone = json.loads((tmp_path / "code.json").read_text())["sets"]["mine"]
    assert base["code/mine/solution_bits_per_char"] == pytest.approx(alone["solution_bits_per_char"], rel=1e-5)
    assert [i.get("solution_chars") for i in alone["items"]] == [len(ADD["canonical_solution"]), None]  # TWICE has none
    card = subprocess.run([sys.executable, "-m", "evaluation", "scorecard", "--model", f"base={tmp_path / 'eval_base.json'}",
                           "--model", f"now={tmp_path / 'code.json'}", "--out", str(tmp_path / "card.md")],
                          capture_output=True, text=True, cwd=REPO)
    assert card.returncode == 0, card.stderr
    row = json.loads((tmp_path / "card.md.json").read_text())["rows"]["code/mine/solution_bits_per_char"]
    assert row["better"] == "lower" and row["models"]["now"]["change"] == pytest.approx(0, abs=1e-4)
    assert row["models"]["now"]["differs"] == []
