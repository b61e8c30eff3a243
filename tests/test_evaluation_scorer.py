"""The letter-logit scorer on a tiny model trained to give known answers; the CLI end to end."""
from __future__ import annotations

import argparse
import json

import pytest

from evaluation.benchmarks import load_benchmark
from helpers_bench import EN, small_ceval, tiny_model_knowing, write_mmlu


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ceval = load_benchmark("ceval", small_ceval(root / "ceval"), "val")
    mmlu_dir = write_mmlu(root / "mmlu", {"dev": {"global_facts": EN[:1]}, "val": {"global_facts": EN}})
    mmlu = load_benchmark("mmlu", mmlu_dir, "val")
    model = tiny_model_knowing(root / "m", [ceval, mmlu])
    return model, root


def _args(model, data, bench, out, **kw):
    base = dict(model=str(model), tokenizer=None, benchmark=bench, data=str(data), split="val", shots=0,
                max_items_per_subject=None, subjects=None, batch_size=2, max_length=None, device="cpu",
                dtype="float32", out=str(out), no_progress=True, contamination=None)
    return argparse.Namespace(**{**base, **kw})


def test_scorer_picks_the_answers_the_model_was_trained_to_give(trained, tmp_path):
    from evaluation import choice_cli

    model, root = trained
    for bench in ("ceval", "mmlu"):
        out = tmp_path / f"{bench}.json"
        assert choice_cli.run(_args(model, root / bench, bench, out)) == 0
        res = json.loads(out.read_text())
        answers = [p["answer"] for p in res["predictions"]]
        assert len(set(answers)) >= 3  # answers vary, so a constant guess cannot pass
        assert [p["pred"] for p in res["predictions"]] == answers, res["predictions"]
        assert res["accuracy"] == 1.0 and res["items"] == len(answers)
        assert all(len(p["logprobs"]) == 4 and max(p["logprobs"]) <= 0 for p in res["predictions"])
    assert set(res["data_sha256"]) == {str(p) for p in sorted((root / "mmlu").rglob("*.csv"))}


def test_batching_and_padding_do_not_change_scores(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.choice import evaluate_benchmark

    model_dir, root = trained
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    bench = load_benchmark("ceval", root / "ceval", "val", shots=2)  # few-shot: prompts of different lengths
    _, one = evaluate_benchmark(model, tok, bench, batch_size=1, device="cpu")
    _, four = evaluate_benchmark(model, tok, bench, batch_size=4, device="cpu")
    assert [p["pred"] for p in one] == [p["pred"] for p in four]
    torch.testing.assert_close(torch.tensor([p["logprobs"] for p in one]), torch.tensor([p["logprobs"] for p in four]),
                               rtol=0, atol=1e-4)


def test_contaminated_items_are_scored_apart(trained, tmp_path, capsys):
    from evaluation import choice_cli
    from helpers_bench import contamination_report

    model, root = trained
    report = contamination_report(tmp_path, root / "ceval")
    out = tmp_path / "ceval.json"
    assert choice_cli.run(_args(model, root / "ceval", "ceval", out, contamination=str(report))) == 0
    res = json.loads(out.read_text())
    assert res["contamination"] == {"clean": {"accuracy": 1.0, "correct": 4, "items": 4},
                                    "contaminated": {"accuracy": 1.0, "correct": 1, "items": 1}}
    leaked = [p for p in res["predictions"] if p["contamination"] == "contaminated"]
    assert [p["where"].rsplit("/", 1)[1] for p in leaked] == ["law_val.csv:2"]
    assert "| contaminated items (contamination report) | 1.0000 | 1 |" in capsys.readouterr().out
