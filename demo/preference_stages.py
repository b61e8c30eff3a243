"""The demo's preference stages, after SFT (07_eval): 08_dpo, 09_kto and 10_grpo.

08_dpo trains on pairs made from train reviews, the review's label chosen over the other one. 09_kto
trains on the SFT model's own answers to train reviews (the label it finds likelier, as 07_eval scores
test reviews), each judged by the review's label: a thumbs up when right, down when wrong. These are the
verdicts a deployed model collects. 10_grpo lets the model answer the same train reviews during training,
several times each, rewarded when the answer is the label (a verifiable reward). All three then score the
test reviews as 07_eval does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .budget import Budget
from .pipeline import (PY, SFT_SYSTEM_PROMPT, TRAINING_CODE, Layout, _metrics_jsonl, _read_json, collect_training,
                       engine_overrides, torchrun)
from .stages import Command, Stage

DPO_PRESET = "sft/configs/dpo_tiny_cpu.yaml"
KTO_PRESET = "sft/configs/kto_tiny_cpu.yaml"
GRPO_PRESET = "sft/configs/grpo_tiny_cpu.yaml"
CODE = ["sft", *TRAINING_CODE, "demo/evaluate.py", "demo/split.py"]


def _preference_overrides(b: Budget, objective: list[str], data: Path, stage: Path) -> list[str]:
    return ["mode=full", *objective, "data.files=[{path: %s, weight: 1.0}]" % json.dumps(str(data)),
            "data.eval_fraction=0.1",
            "data.template=alpaca", f"data.system_prompt={SFT_SYSTEM_PROMPT}",
            f"data.max_seq_length={b.sft_max_seq_length}", f"data.cache_dir={stage / 'cache'}"]


def _write_pairs(sft_train: Path, count: int):
    """DPO pairs from the first SFT train records: the record's label chosen, the other label rejected."""
    def prepare(stage: Stage) -> None:
        from .split import NEGATIVE, POSITIVE

        other = {POSITIVE: NEGATIVE, NEGATIVE: POSITIVE}
        records = _read_json(sft_train)[:count]
        lines = [json.dumps({"instruction": r["instruction"], "input": r["input"], "chosen": r["output"],
                             "rejected": other[r["output"]]}, ensure_ascii=False) for r in records]
        path = stage.path("inputs", "pairs.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return prepare


def dpo_stage(lay: Layout, b: Budget) -> Stage:
    dpo_dir, eval_file = lay.stage("08_dpo"), lay.data / "sft_eval.jsonl"
    return Stage(
        "08_dpo", "DPO of the SFT model on pairs from train reviews (right label over wrong), ZeRO-3, 2 ranks",
        dpo_dir,
        settings={k: getattr(b, k) for k in ("dpo_pairs", "dpo_steps", "dpo_lr", "dpo_beta", "dpo_micro_batch",
                                             "sft_max_seq_length", "ranks")} | {"system_prompt": SFT_SYSTEM_PROMPT},
        inputs={"model": lay.sft_final, "sft_train": lay.data / "sft_train.json", "eval": eval_file,
                "train_labels": lay.data / "split_report.json"},
        commands=[
            torchrun(b, "sft", DPO_PRESET,
                     engine_overrides(dpo_dir / "run", lay.sft_final, b.dpo_lr, b.dpo_micro_batch, b.dpo_steps)
                     + _preference_overrides(b, [f"dpo.beta={b.dpo_beta}"], dpo_dir / "inputs" / "pairs.jsonl", dpo_dir)),
            Command([PY, "-m", "demo.evaluate", "--model", str(lay.dpo_final), "--eval", str(eval_file),
                     "--train-labels", str(lay.data / "split_report.json"), "--out", str(dpo_dir / "eval.json")]),
        ],
        code=CODE,
        prepare=_write_pairs(lay.data / "sft_train.json", b.dpo_pairs),
        collect=collect_dpo,
    )


def collect_dpo(stage: Stage) -> dict[str, Any]:
    curve = _metrics_jsonl(stage.path("run", "metrics.jsonl"))
    evals = [r for r in curve if "eval/reward_accuracy" in r]
    ev = _read_json(stage.path("eval.json"))
    return {**collect_training(stage), "accuracy": ev.get("accuracy"), "examples": ev.get("examples"),
            "pairs_eval_reward_accuracy": [[r["step"], r["eval/reward_accuracy"]] for r in evals],
            "pairs_eval_reward_margin": [[r["step"], r["eval/reward_margin"]] for r in evals]}


def _write_train_prompts(sft_train: Path, first: int, count: int, name: str = "train_prompts.jsonl",
                         label: str = "label"):
    """Train records the SFT model answers for KTO and GRPO (after the ones DPO used), as 07_eval's test records
    are written: instruction, input and the review's label (GRPO: as ``answer``, which its reward checks)."""
    def prepare(stage: Stage) -> None:
        records = _read_json(sft_train)[first:first + count]
        path = stage.path("inputs", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["input"], label: r["output"]},
                                           ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return prepare


def kto_stage(lay: Layout, b: Budget) -> Stage:
    kto_dir, eval_file, labels = lay.stage("09_kto"), lay.data / "sft_eval.jsonl", lay.data / "split_report.json"
    judged = kto_dir / "inputs" / "judged.jsonl"
    return Stage(
        "09_kto", "KTO of the SFT model on its own answers to train reviews, judged by their labels, ZeRO-3, 2 ranks",
        kto_dir,
        settings={k: getattr(b, k) for k in ("dpo_pairs", "kto_examples", "kto_steps", "kto_lr", "kto_beta",
                                             "kto_undesirable_weight", "kto_micro_batch", "sft_max_seq_length",
                                             "ranks")} | {"system_prompt": SFT_SYSTEM_PROMPT},
        inputs={"model": lay.sft_final, "sft_train": lay.data / "sft_train.json", "eval": eval_file,
                "train_labels": labels},
        commands=[
            Command([PY, "-m", "demo.evaluate", "--model", str(lay.sft_final), "--eval",
                     str(kto_dir / "inputs" / "train_prompts.jsonl"), "--train-labels", str(labels),
                     "--out", str(kto_dir / "judged.json"), "--judged-out", str(judged)]),
            torchrun(b, "sft", KTO_PRESET,
                     engine_overrides(kto_dir / "run", lay.sft_final, b.kto_lr, b.kto_micro_batch, b.kto_steps)
                     + _preference_overrides(b, [f"kto.beta={b.kto_beta}",
                                                 f"kto.undesirable_weight={b.kto_undesirable_weight}"], judged, kto_dir)),
            Command([PY, "-m", "demo.evaluate", "--model", str(lay.kto_final), "--eval", str(eval_file),
                     "--train-labels", str(labels), "--out", str(kto_dir / "eval.json")]),
        ],
        code=CODE,
        prepare=_write_train_prompts(lay.data / "sft_train.json", b.dpo_pairs, b.kto_examples),
        collect=collect_kto,
    )


def collect_kto(stage: Stage) -> dict[str, Any]:
    curve = _metrics_jsonl(stage.path("run", "metrics.jsonl"))
    evals = [r for r in curve if "eval/kl" in r]
    judged, ev = _read_json(stage.path("judged.json")), _read_json(stage.path("eval.json"))
    return {**collect_training(stage), "accuracy": ev.get("accuracy"), "examples": ev.get("examples"),
            "judged": judged.get("examples"), "desirable": judged.get("correct"),
            "eval_reward_desirable": [[r["step"], r.get("eval/reward_desirable")] for r in evals],
            "eval_reward_undesirable": [[r["step"], r.get("eval/reward_undesirable")] for r in evals]}


def grpo_stage(lay: Layout, b: Budget) -> Stage:
    grpo_dir, eval_file, labels = lay.stage("10_grpo"), lay.data / "sft_eval.jsonl", lay.data / "split_report.json"
    prompts = grpo_dir / "inputs" / "prompts.jsonl"
    settings = [f"grpo.generations={b.grpo_generations}", "grpo.max_new_tokens=4", "grpo.rewards={exact: 1.0}",
                "deepspeed.preset=zero2"]  # ZeRO-2: answers written without per-token weight gathers
    return Stage(
        "10_grpo", "GRPO of the SFT model: it answers train reviews, rewarded when right (exact label), ZeRO-2, 2 ranks",
        grpo_dir,
        settings={k: getattr(b, k) for k in ("dpo_pairs", "kto_examples", "grpo_steps", "grpo_lr", "grpo_generations",
                                             "grpo_micro_batch", "sft_max_seq_length", "ranks")}
        | {"system_prompt": SFT_SYSTEM_PROMPT},
        inputs={"model": lay.sft_final, "sft_train": lay.data / "sft_train.json", "eval": eval_file,
                "train_labels": labels},
        commands=[
            torchrun(b, "sft", GRPO_PRESET,
                     engine_overrides(grpo_dir / "run", lay.sft_final, b.grpo_lr, b.grpo_micro_batch, b.grpo_steps)
                     + _preference_overrides(b, settings, prompts, grpo_dir)),
            Command([PY, "-m", "demo.evaluate", "--model", str(lay.grpo_final), "--eval", str(eval_file),
                     "--train-labels", str(labels), "--out", str(grpo_dir / "eval.json")]),
        ],
        code=CODE,
        prepare=_write_train_prompts(lay.data / "sft_train.json", b.dpo_pairs, b.kto_examples, "prompts.jsonl", "answer"),
        collect=collect_grpo,
    )


def collect_grpo(stage: Stage) -> dict[str, Any]:
    curve = _metrics_jsonl(stage.path("run", "metrics.jsonl"))
    ev = _read_json(stage.path("eval.json"))
    return {**collect_training(stage), "accuracy": ev.get("accuracy"), "examples": ev.get("examples"),
            "train_curve": [[r["step"], r["train/reward"]] for r in curve if "train/reward" in r],
            "eval_reward": [[r["step"], r["eval/reward"]] for r in curve if "eval/reward" in r],
            "flat_groups": [[r["step"], r["train/flat_groups"]] for r in curve if "train/flat_groups" in r]}
