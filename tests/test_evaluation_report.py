"""Base numbers with the base's own tokenizer, the guard's bounds, the forgetting report, config checks."""
from __future__ import annotations

import argparse
import json

import pytest

from helpers_bench import contamination_report, small_ceval
from helpers_prepare import write_lines, write_manifest
from zhllama.errors import UserError

TEXTS = [f"第{i}行：春眠不觉晓，处处闻啼鸟。The quick brown fox {i}." for i in range(40)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_text_bits_predicts_every_token_but_start_once(tiny):
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.text_bpc import text_bits

    tok, model = AutoTokenizer.from_pretrained(tiny), AutoModelForCausalLM.from_pretrained(tiny).eval()
    docs = TEXTS[:5]
    nats, tokens = 0.0, 0
    for text in docs:  # one forward per whole document, the HF way
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]])
        with torch.no_grad():
            nats += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
    whole = text_bits(model, tok, docs, block_size=512, batch_size=2)
    assert whole["tokens"] == tokens and whole["characters"] == sum(map(len, docs))
    assert whole["bits_per_char"] == pytest.approx(nats / math.log(2) / whole["characters"], rel=1e-5)
    cut = text_bits(model, tok, docs, block_size=8, batch_size=3)  # windows overlap by one token
    assert cut["tokens"] == tokens and cut["bits_per_char"] > whole["bits_per_char"]  # less context, more bits


def test_base_cli_writes_base_numbers_and_nothing_on_bad_input(tiny, tmp_path):
    from evaluation import base_cli

    corpus = write_lines(tmp_path / "zh.txt", TEXTS)
    manifest = write_manifest(tmp_path / "zh.yaml", [{"name": "zh", "file": corpus}], holdout=0.5)
    out = tmp_path / "run" / "eval_base.json"
    ceval = small_ceval(tmp_path / "ceval")
    parser = argparse.ArgumentParser()
    base_cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny), "--out", str(out), "--set", f"zh={manifest}", "--set",
                              f"eval={manifest}", "--benchmark", f"ceval={ceval}", "--shots", "1", "--contamination",
                              f"ceval={contamination_report(tmp_path, ceval)}", "--block-size", "64",
                              "--batch-size", "4", "--dtype", "float32", "--reading", f"poems={_poems(tmp_path)}",
                              "--reading-shots", "1"])
    assert base_cli.run(args) == 0
    base = json.loads(out.read_text())
    assert {"eval/zh/bits_per_char", "eval/zh/loss", "eval/bits_per_char", "bench/ceval/accuracy",
            "bench/ceval/stem", "bench/ceval/clean_accuracy", "bench/ceval/contaminated_accuracy",
            "reading/poems/answer_bits_per_char", "reading/poems/greedy_answer"} <= set(base["metrics"])
    standalone = _reading_run(tiny, _poems(tmp_path), tmp_path / "reading.json")  # `evaluation reading --shots 1`
    assert base["metrics"]["reading/poems/answer_bits_per_char"] == pytest.approx(standalone["answer_bits_per_char"],
                                                                                  rel=1e-4)
    args.contamination = [f"mmlu={tmp_path / 'contamination.keys.json'}"]
    with pytest.raises(UserError, match=r"--contamination \['mmlu'\]: no --benchmark of that name"):
        base_cli.run(args)
    args.contamination = []
    assert base["metrics"]["eval/zh/bits_per_char"] == base["metrics"]["eval/bits_per_char"] > 0
    bad = write_manifest(tmp_path / "none.yaml", [{"name": "zh", "file": corpus}])  # no holdout slice
    args.set, args.out = [f"zh={bad}"], str(tmp_path / "other" / "eval_base.json")
    with pytest.raises(UserError, match="no holdout slice"):
        base_cli.run(args)
    assert not (tmp_path / "other").exists()


def _poems(root):
    from helpers_reading import article as _article, squad_file as _squad

    return _squad(root / "poems.json", [_article(f"t{i}", c, [(f"q{i}", "什么？", c[:2])])
                                        for i, c in enumerate(["春眠不觉晓。", "白日依山尽。", "床前明月光。"])])


def _reading_run(model, data, out) -> dict:
    from evaluation import reading_cli

    parser = argparse.ArgumentParser()
    reading_cli.add_arguments(parser)
    assert reading_cli.run(parser.parse_args(["--model", str(model), "--set", f"poems={data}", "--shots", "1",
                                              "--out", str(out), "--no-progress"])) == 0
    return json.loads(out.read_text())["sets"]["poems"]


def _cfg(tmp_path, **eval_section):
    from engine import TrainConfig
    from zhllama.config import load_config

    overrides = ["model.path=m", f"output_dir={tmp_path}"] + [f"eval.{k}={v}" for k, v in eval_section.items()]
    return load_config(TrainConfig, None, overrides)


def test_guard_bounds_a_rise_or_a_fall_relative_to_base(tmp_path):
    from engine.watch import Watch

    base = tmp_path / "base.json"
    base.write_text(json.dumps({"metrics": {"eval/en/bits_per_char": 1.0, "bench/ceval/accuracy": 0.5}}))
    cfg = _cfg(tmp_path, sets="[{name: en, dir: x}]", guard="{en.bits_per_char: 0.05, eval.loss: 0.1}",
               base=str(base))
    watch = Watch(cfg, {"en": (None, None)})
    assert watch.check_guard(4, {"eval/en/bits_per_char": 1.05}) == []  # on the bound: fine
    (trip,) = watch.check_guard(8, {"eval/en/bits_per_char": 1.06, "eval/loss": 9.0})  # eval.loss: no base, skipped
    assert (trip["key"], trip["step"], trip["bound"]) == ("en.bits_per_char", 8, pytest.approx(1.05))
    cfg = _cfg(tmp_path, benchmarks=f"[{{name: ceval, data: {small_ceval(tmp_path / 'c')}}}]",
               guard="{ceval.accuracy: -0.1}", base=str(base))
    from engine.tiny import make_tiny_model

    cfg.model.path = str(make_tiny_model(tmp_path / "m"))
    watch = Watch(cfg)
    assert watch.check_guard(2, {"bench/ceval/accuracy": 0.45}) == []
    assert [t["metric"] for t in watch.check_guard(3, {"bench/ceval/accuracy": 0.39})] == ["bench/ceval/accuracy"]


def test_contamination_settings_of_a_benchmark_are_checked(tmp_path):
    with pytest.raises(UserError) as err:
        _cfg(tmp_path, benchmarks=f"[{{name: ceval, data: d, contamination: {tmp_path / 'none.json'}}}, "
                                  "{name: mmlu, data: d}]", guard="{mmlu.clean_accuracy: -0.1}")
    text = str(err.value)
    assert "benchmarks[0].contamination: " in text and "none.json is not a file" in text, text
    assert "guard.mmlu.clean_accuracy: needs the benchmark's contamination report" in text, text


def test_eval_config_problems_are_named(tmp_path):
    with pytest.raises(UserError) as err:
        _cfg(tmp_path, sets="[{name: en, dir: x}, {name: en, dir: y}, {name: 'a b', dir: z}]",
             guard="{fr.bits_per_char: 0.1, en.bits_per_char: 0, en.accuracy: 0.1}", base="none")
    text = str(err.value)
    for expected in ("sets: names must be unique, repeated: ['en']", "sets[2].name: expected letters",
                     "guard.fr.bits_per_char: expected <set>", "guard.en.bits_per_char: expected a non-zero number",
                     "guard.en.accuracy: expected <set>", "guard: needs base numbers; base is 'none'"):
        assert expected in text, text
    from engine.watch import Watch

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError) as err:  # every set is checked before the model loads, one error for all
        Watch(_cfg(tmp_path, sets=f"[{{name: en, dir: {tmp_path / 'none'}}}, {{name: zh, dir: {tmp_path / 'a_file'}}}]"))
    text = str(err.value)
    assert "2 problems" in text and f"eval.sets en: prepared data folder {tmp_path / 'none'} does not exist" in text
    assert f"eval.sets zh: prepared data folder {tmp_path / 'a_file'} is a file" in text, text
    with pytest.raises(UserError, match="eval.sets \\['en'\\]: the caller's eval_sets do not hold them"):
        Watch(_cfg(tmp_path, sets="[{name: en, dir: x}]"), {})


def test_forgetting_report_rows_changes_and_trips(tmp_path):
    from evaluation.forgetting import write_report

    lines = [{"step": 1, "train/loss": 3.0}, {"step": 4, "eval/en/bits_per_char": 1.2, "bench/ceval/accuracy": 0.5},
             {"step": 8, "eval/en/bits_per_char": 1.5, "bench/ceval/accuracy": 0.25, "eval/loss": 2.0,
              "math/gsm/solution_bits_per_char": 0.9, "math/gsm/answer_greedy": 40.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    base = {"source": "base folder", "metrics": {"eval/en/bits_per_char": 1.0, "bench/ceval/accuracy": 0.5,
                                                 "math/gsm/solution_bits_per_char": 0.8, "math/gsm/answer_greedy": 50.0}}
    trip = {"key": "en.bits_per_char", "metric": "eval/en/bits_per_char", "step": 8, "value": 1.5, "base": 1.0,
            "bound": 1.3, "allowed_change": 0.3, "action": "warn"}
    table = write_report(tmp_path, base, [trip])
    assert table["eval/en/bits_per_char"]["change"] == pytest.approx(0.5)
    assert [p["change"] for p in table["bench/ceval/accuracy"]["steps"]] == [0.0, -0.25]
    assert table["eval/loss"]["base"] is None and "train/loss" not in table
    assert table["math/gsm/solution_bits_per_char"]["better"] == "lower"  # math sets' numbers are watched too
    assert table["math/gsm/answer_greedy"]["better"] == "higher"
    md = (tmp_path / "report.md").read_text()
    assert "| eval/en/bits_per_char | 1.0000 | 1.2000 (+0.2000) | 1.5000 (+0.5000) | +0.5000 |" in md
    assert "| eval/loss | – |  | 2.0000 (–) | – |" in md
    assert "- **en** drifted at step 8: eval/en/bits_per_char = 1.5000, base 1.0000, allowed change +0.3 → warn" in md
    assert (tmp_path / "forgetting.png").stat().st_size > 1000


def test_reading_sets_in_the_eval_section_are_checked_and_guarded(tmp_path):
    with pytest.raises(UserError) as err:
        _cfg(tmp_path, sets="[{name: cmrc, dir: x}]",
             reading=f"[{{name: cmrc, file: {tmp_path / 'none.json'}, shots: 9}}, {{name: 'a b', file: x}}]",
             math=f"[{{name: gsm, file: {tmp_path / 'none.jsonl'}, max_new_tokens: 0}}, {{name: cmrc, file: x, "
                  f"shots_from: y}}]",
             code=f"[{{name: py, file: {tmp_path / 'none.jsonl'}, batch_size: 0}}]",
             guard="{cmrc.greedy_answer: -1, cmrc.accuracy: -0.1, gsm.solution_bits_per_char: 0.1, gsm.accuracy: -1, "
                   "py.solution_bits_per_char: 0.1, py.pass: -1}")
    text = str(err.value)
    for expected in ("reading[0].file: ", "none.json' is not a file", "reading[0]: shots must be 0..8",
                     "reading[1].name: expected letters", "sets, benchmarks, reading, math and code share names ['cmrc']",
                     "code[0].file: ", "is neither humaneval nor a file", "code[0]: max_items, max_new_tokens and batch_size",
                     "guard.py.pass: expected <set>",
                     "guard.cmrc.accuracy: expected <set>", "math[0].file: ", "none.jsonl' is not a file",
                     "math[0]: shots must be 0..8, max_items, max_new_tokens", "math[1].shots_from: 'y' is not a file",
                     "guard.gsm.accuracy: expected <set>"):
        assert expected in text, text
    assert "guard.cmrc.greedy_answer" not in text  # a reading set's metric is a known guard key
    assert "guard.gsm.solution_bits_per_char" not in text  # and a math set's
    assert "guard.py.solution_bits_per_char" not in text  # and a code set's
    from engine.tiny import make_tiny_model
    from engine.watch import Watch

    poems = _poems(tmp_path)
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"metrics": {"reading/poems/answer_bits_per_char": 2.0}}))
    cfg = _cfg(tmp_path, reading=f"[{{name: poems, file: {poems}, shots: 1}}]",
               guard="{poems.answer_bits_per_char: 0.5}", base=str(base))
    cfg.model.path = str(make_tiny_model(tmp_path / "m"))
    watch = Watch(cfg)
    (_, _, prompts, requests, _), = watch.readings
    assert [p.question.key for p in prompts] == ["q0", "q1", "q2"] and all(p.shots == 1 for p in prompts)
    assert watch.check_guard(2, {"reading/poems/answer_bits_per_char": 2.4}) == []
    assert [t["key"] for t in watch.check_guard(3, {"reading/poems/answer_bits_per_char": 2.6})] == [
        "poems.answer_bits_per_char"]
