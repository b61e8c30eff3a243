"""`python -m pretrain train` with named held-out sets and benchmarks (single process, real shards)."""
from __future__ import annotations

import json

from helpers_train import _train, assets  # noqa: F401  (assets is a fixture: prepared shards + tiny model)


def _common(a, out):
    return [f"model.path={a['model']}", f"data.dir={a['shards']}", f"output_dir={out}", "schedule.max_steps=2",
            "eval.every_steps=2", "eval.at_start=false", "checkpoint.every_steps=0", "logging.wandb=disabled",
            "logging.tensorboard=false"]


def test_named_sets_from_prepare_folders(assets):  # noqa: F811
    out = assets["root"] / "named"
    proc = _train(*_common(assets, out),
                  f"eval.sets=[{{name: same, dir: '{assets['shards']}'}}, {{name: more, dir: '{assets['more_shards']}'}}]")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    # the validation split named again: the same forwards, the same numbers
    assert last["eval/same/bits_per_char"] == last["eval/bits_per_char"] > 0
    assert last["eval/same/loss"] == last["eval/loss"] and last["eval/more/bits_per_char"] > 0
    base = json.loads((out / "eval_base.json").read_text())["metrics"]
    assert base["eval/same/bits_per_char"] == base["eval/bits_per_char"] != last["eval/bits_per_char"]
    assert "| eval/more/bits_per_char |" in (out / "report.md").read_text()


def test_sets_and_benchmarks_are_checked_before_training(assets, tmp_path):  # noqa: F811
    out = assets["root"] / "refused_set"
    proc = _train(*_common(assets, out), f"eval.sets=[{{name: other, dir: '{assets['other_shards']}'}}]")
    assert proc.returncode == 2 and "eval.sets other:" in proc.stderr and "another tokenizer" in proc.stderr, \
        proc.stderr[-3000:]
    bad = tmp_path / "ceval" / "val"
    bad.mkdir(parents=True)
    (bad / "law_val.csv").write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n", encoding="utf-8")
    (tmp_path / "ceval" / "dev").mkdir()
    (tmp_path / "ceval" / "dev" / "law_dev.csv").write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n")
    out = assets["root"] / "refused_bench"
    proc = _train(*_common(assets, out), f"eval.benchmarks=[{{name: ceval, data: '{tmp_path / 'ceval'}'}}]")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "law_val.csv:2: answer 'E' is not one of A, B, C, D" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "final").exists() and not (out / "checkpoints").exists()


def test_guard_stop_saves_a_checkpoint_and_the_same_run_resumes(assets):  # noqa: F811
    out = assets["root"] / "guarded"
    args = [*_common(assets, out), "schedule.max_steps=4", f"eval.sets=[{{name: same, dir: '{assets['shards']}'}}]"]
    # training on this corpus lowers its held-out bits/char: a bound on a fall of 0.01 must trip at step 2
    proc = _train(*args, "eval.guard={same.bits_per_char: -0.01}", "eval.guard_action=stop")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "guard: same drifted at step 2: eval/same/bits_per_char" in proc.stdout
    report = json.loads((out / "train_report.json").read_text())
    assert report["step"] == 2 and report["stopped_by_guard"] is True
    assert (out / "checkpoints" / "step-00000002" / "complete.json").is_file() and (out / "final").is_dir()
    base = (out / "eval_base.json").read_text()
    proc = _train(*args)  # the bound lifted: the run continues from the guard's checkpoint
    assert proc.returncode == 0 and "resuming from step-00000002" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads((out / "train_report.json").read_text())
    assert report["step"] == 4 and report["stopped_by_guard"] is False
    assert (out / "eval_base.json").read_text() == base  # computed once, reused on resume
    assert [p["step"] for p in report["forgetting"]["eval/same/bits_per_char"]["steps"]] == [2, 4]
