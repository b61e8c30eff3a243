"""Evaluation during training on 2 real CPU ranks (torchrun, gloo, ZeRO-3) — one launch.

The base model is a tiny LLaMA first trained on English; the run then trains on Chinese only, so
English bits/char rise: the guard (en.bits_per_char: +0.3, stop) must trip, naming the set and the
step, after saving a checkpoint. Every in-training number (named sets' bits/char, C-Eval letter
log-probabilities per item, a reading set's reference answers, a math set's reference solutions, a code set's
canonical solutions, the base
numbers at step 0) must equal
the standalone computation on the exported model / the base folder. This file is also the per-rank driver.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from engine.tiny import DEFAULT_TEXT, TinyPacked

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed
EN = ["The cat sat on the mat and watched the rain fall on the quiet town.",
      "Rivers run to the sea, yet the sea is never full; the wind goes round and round.",
      "A small boat crossed the lake at dawn while the birds were still asleep."]
ZH = DEFAULT_TEXT[0:3]
GUARD = 0.3


def sets(model: str) -> dict:
    zh, en = TinyPacked(model, 0, 6, texts=ZH * 2), TinyPacked(model, 0, 6, texts=EN * 2)
    return {"zh": (zh, zh.characters), "en": (en, en.characters)}


def _driver(spec: dict) -> None:
    from engine import loop
    from pretrain.train_cli import PretrainConfig
    from zhllama.config import load_config

    cfg = load_config(PretrainConfig, REPO / "pretrain" / "configs" / "tiny_cpu.yaml", spec["overrides"])
    train_ds = TinyPacked(cfg.model.path, 0, 48, texts=ZH * 16)  # Chinese only: English is forgotten
    eval_ds = TinyPacked(cfg.model.path, 3, 12)
    loop.run_training(cfg, train_ds, eval_ds, None, eval_characters=eval_ds.characters, data_fingerprint="zh-v1",
                      tokenizer_fingerprint=None, eval_sets=sets(cfg.model.path))


def _english_base(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.data import default_collate
    from engine.tiny import make_tiny_model

    path = make_tiny_model(out)
    model = AutoModelForCausalLM.from_pretrained(path)
    batch = default_collate(TinyPacked(str(path), 0, 12, texts=EN * 4).items)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
              use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    import subprocess

    from helpers_bench import contamination_report, small_ceval
    from helpers_dist import dist_env, torchrun_command

    root = tmp_path_factory.mktemp("guard")
    base, ceval, out = _english_base(root / "base"), small_ceval(root / "ceval"), root / "run"
    contamination = contamination_report(root, ceval)
    poems = _poems(root / "poems.json")
    problems = _problems(root / "problems.jsonl")
    tasks = _tasks(root / "tasks.jsonl")
    overrides = [
        f"model.path={base}", f"output_dir={out}", "checkpoint.every_steps=0", "eval.every_steps=4",
        "eval.at_start=false", "eval.sets=[{name: zh, dir: driver}, {name: en, dir: driver}]",
        f"eval.benchmarks=[{{name: ceval, data: '{ceval}', shots: 1, batch_size: 2, contamination: '{contamination}'}}]",
        f"eval.reading=[{{name: poems, file: '{poems}', shots: 1, max_questions: 5, batch_size: 2}}]",
        f"eval.math=[{{name: sums, file: '{problems}', shots: 1, max_items: 4, max_new_tokens: 64, batch_size: 3}}]",
        f"eval.code=[{{name: py, file: '{tasks}', max_new_tokens: 64, batch_size: 2}}]",
        f"eval.guard={{en.bits_per_char: {GUARD}}}", "eval.guard_action=stop",
    ]
    cmd = torchrun_command(__file__, {"overrides": overrides})  # this file is the driver
    proc = subprocess.run(cmd, cwd=REPO, env=dist_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return base, ceval, out, proc.stdout + proc.stderr


def _poems(path: Path) -> Path:
    """A reading set in SQuAD's layout: six questions on four lines of poems, one article each."""
    lines = [("春眠不觉晓，处处闻啼鸟。", [("什么不觉晓？", "春眠"), ("哪里闻啼鸟？", "处处")]),
             ("白日依山尽，黄河入海流。", [("什么入海流？", "黄河")]), ("床前明月光，疑是地上霜。", [("床前是什么？", "明月光")]),
             ("夜来风雨声，花落知多少。", [("夜来什么声？", "风雨"), ("花落知多少？", "多少")])]
    data = [{"title": f"t{i}", "paragraphs": [{"context": c, "qas": [
        {"id": f"a{i}q{j}", "question": q, "answers": [{"text": a, "answer_start": c.find(a)}]}
        for j, (q, a) in enumerate(qas)]}]} for i, (c, qas) in enumerate(lines)]
    path.write_text(json.dumps({"data": data}, ensure_ascii=False), encoding="utf-8")
    return path


def _problems(path: Path) -> Path:
    """A math set in GSM8K's layout, in Chinese: five worked problems."""
    rows = [("小明有3个苹果，又买了4个，一共有几个？", "3+4=7", 7), ("一支笔2元，6支笔多少元？", "6×2=12", 12),
            ("书架上有10本书，拿走3本，还剩几本？", "10-3=7", 7), ("一天有24小时，两天有几小时？", "24×2=48", 48),
            ("妈妈买了8个梨，吃了一半，还剩几个？", "8÷2=4", 4)]
    path.write_text("".join(json.dumps({"question": q, "answer": f"{a}\n#### {n}"}, ensure_ascii=False) + "\n"
                            for q, a, n in rows), encoding="utf-8")
    return path


def _tasks(path: Path) -> Path:
    """A code set in HumanEval's layout: three functions with their canonical solutions."""
    rows = [("add", "a, b", "Sum of a and b.", "    return a + b\n", "candidate(2, 3) == 5"),
            ("double", "x", "Twice x.", "    return 2 * x\n", "candidate(4) == 8"),
            ("first", "items", "The first item.", "    return items[0]\n", "candidate([7, 8]) == 7")]
    path.write_text("".join(json.dumps({"task_id": f"t/{name}", "prompt": f'def {name}({args}):\n    """{doc}"""\n',
                                        "entry_point": name, "canonical_solution": body,
                                        "test": f"def check(candidate):\n    assert {check}\n"}) + "\n"
                            for name, args, doc, body, check in rows), encoding="utf-8")
    return path


def test_named_sets_benchmarks_guard_and_report(guarded_run):
    base, _, out, log = guarded_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/en/bits_per_char" in r]
    for r in evals:  # the validation split keeps its metrics; named sets and the benchmark join them
        assert {"eval/loss", "eval/bits_per_char", "eval/zh/loss", "eval/zh/bits_per_char", "eval/en/loss",
                "bench/ceval/accuracy", "bench/ceval/stem", "bench/ceval/hard", "bench/ceval/clean_accuracy",
                "bench/ceval/contaminated_accuracy", "reading/poems/answer_bits_per_char",
                "reading/poems/greedy_answer", "math/sums/solution_bits_per_char", "math/sums/answer_greedy",
                "code/py/solution_bits_per_char"} <= set(r), \
            sorted(r)
    base_metrics = json.loads((out / "eval_base.json").read_text())["metrics"]
    bound = base_metrics["eval/en/bits_per_char"] + GUARD
    first_over = next(r["step"] for r in evals if r["eval/en/bits_per_char"] > bound)  # the planted drift
    assert evals[-1]["step"] == first_over  # stopped at the first evaluation past the bound
    assert f"guard: en drifted at step {first_over}: eval/en/bits_per_char" in log, log[-3000:]
    report = json.loads((out / "train_report.json").read_text())
    assert report["step"] == first_over < 16 and report["stopped_by_guard"] is True
    assert [(t["key"], t["step"]) for t in report["guard_trips"]] == [("en.bits_per_char", first_over)]
    assert max(r["step"] for r in records if "train/loss" in r) == first_over  # no step after the stop
    assert (out / "checkpoints" / f"step-{first_over:08d}" / "complete.json").is_file()  # resumable
    row = report["forgetting"]["eval/en/bits_per_char"]
    assert row["base"] == base_metrics["eval/en/bits_per_char"] and row["change"] > GUARD
    md = (out / "report.md").read_text()
    assert f"**en** drifted at step {first_over}" in md and "| eval/zh/bits_per_char |" in md
    for artefact in ("forgetting.png", "loss_curve.png", "final/model.safetensors"):
        assert (out / artefact).is_file(), artefact


def test_in_training_numbers_equal_standalone(guarded_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import default_collate
    from evaluation.benchmarks import load_benchmark
    from evaluation.bpc import dataset_bits
    from evaluation.choice import evaluate_benchmark
    from evaluation.contamination_cli import item_statuses
    from evaluation.results import by_contamination

    base, ceval, out, _ = guarded_run
    step = json.loads((out / "train_report.json").read_text())["step"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    at_stop = next(r for r in logged if r["step"] == step and "eval/en/bits_per_char" in r)
    at_base = json.loads((out / "eval_base.json").read_text())["metrics"]
    bench = load_benchmark("ceval", ceval, "val", shots=1)
    for folder, expected, tag in ((out / "final", at_stop, f"step-{step:08d}"), (base, at_base, "step-00000000")):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        for name, (ds, chars) in sets(str(base)).items():
            got = dataset_bits(model, ds, default_collate, chars, batch_size=3)
            assert got["bits_per_char"] == pytest.approx(expected[f"eval/{name}/bits_per_char"], rel=1e-5), (tag, name)
        summary, preds = evaluate_benchmark(model, AutoTokenizer.from_pretrained(folder), bench, batch_size=3,
                                            device="cpu")
        inside = json.loads((out / "evals" / "ceval" / f"{tag}.json").read_text())
        assert [p["pred"] for p in preds] == [p["pred"] for p in inside["predictions"]]
        torch.testing.assert_close(torch.tensor([p["logprobs"] for p in preds]),
                                   torch.tensor([p["logprobs"] for p in inside["predictions"]]), rtol=0, atol=1e-4)
        assert summary["accuracy"] == pytest.approx(expected["bench/ceval/accuracy"])
        apart = by_contamination(preds, item_statuses(ceval.parent / "contamination.keys.json", "ceval", "val"))
        assert apart["contaminated"]["items"] == 1 and apart["clean"]["items"] == len(preds) - 1
        assert apart["clean"]["accuracy"] == pytest.approx(expected["bench/ceval/clean_accuracy"])
        assert inside["contamination"] == apart
        reading = _reading_standalone(folder, ceval.parent / "poems.json", out / "standalone" / f"{tag}.json")
        assert reading["answer_bits_per_char"] == pytest.approx(expected["reading/poems/answer_bits_per_char"], rel=1e-4)
        assert reading["greedy_answer"] == pytest.approx(expected["reading/poems/greedy_answer"])
        inside = json.loads((out / "evals" / "poems" / f"{tag}.json").read_text())
        assert [i["key"] for i in inside["items"]] == [i["key"] for i in reading["items"]]
        math = _math_standalone(folder, ceval.parent / "problems.jsonl", out / "standalone" / f"{tag}.math.json")
        assert math["solution_bits_per_char"] == pytest.approx(expected["math/sums/solution_bits_per_char"], rel=1e-4)
        assert math["answer_greedy"] == pytest.approx(expected["math/sums/answer_greedy"])
        inside = json.loads((out / "evals" / "sums" / f"{tag}.json").read_text())
        assert [i["key"] for i in inside["items"]] == [i["key"] for i in math["items"]] and len(math["items"]) == 4
        code = _code_standalone(folder, ceval.parent / "tasks.jsonl", out / "standalone" / f"{tag}.code.json")
        assert code["solution_bits_per_char"] == pytest.approx(expected["code/py/solution_bits_per_char"], rel=1e-4)
        inside = json.loads((out / "evals" / "py" / f"{tag}.json").read_text())
        assert [i["key"] for i in inside["items"]] == [i["key"] for i in code["items"]] and len(code["items"]) == 3


def _reading_standalone(model: Path, data: Path, out: Path) -> dict:
    """`python -m evaluation reading` with the run's eval.reading settings (in-process)."""
    import argparse

    from evaluation import reading_cli

    parser = argparse.ArgumentParser()
    reading_cli.add_arguments(parser)
    assert reading_cli.run(parser.parse_args(["--model", str(model), "--set", f"poems={data}", "--shots", "1",
                                              "--max-questions", "5", "--out", str(out), "--no-progress"])) == 0
    return json.loads(out.read_text())["sets"]["poems"]


def _math_standalone(model: Path, data: Path, out: Path) -> dict:
    """`python -m evaluation math` with the run's eval.math settings (in-process); its reference columns."""
    import argparse

    from evaluation import math_cli

    parser = argparse.ArgumentParser()
    math_cli.add_arguments(parser)
    assert math_cli.run(parser.parse_args(["--model", str(model), "--set", f"sums={data}", "--shots", "1",
                                           "--max-items", "4", "--max-new-tokens", "64", "--out", str(out),
                                           "--no-progress"])) == 0
    return json.loads(out.read_text())["sets"]["sums"]


def _code_standalone(model: Path, data: Path, out: Path) -> dict:
    """`python -m evaluation code` with the run's eval.code settings (in-process); its reference column."""
    import argparse

    from evaluation import code_cli

    parser = argparse.ArgumentParser()
    code_cli.add_arguments(parser)
    assert code_cli.run(parser.parse_args(["--model", str(model), "--set", f"py={data}", "--max-new-tokens", "64",
                                           "--allow-execution", "--out", str(out), "--no-progress"])) == 0
    return json.loads(out.read_text())["sets"]["py"]


if __name__ == "__main__":
    _driver(json.loads(sys.argv[1]))
