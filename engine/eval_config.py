"""The ``eval:`` section of the engine's config: named held-out sets, benchmarks, reading, math and code sets
scored during training, the base model's numbers and the guard on them (engine/watch.py runs them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EvalSetConfig:
    """A named held-out set: logged as eval/<name>/loss and eval/<name>/bits_per_char."""

    name: str = ""  # e.g. zh, en, code ([A-Za-z0-9_-])
    dir: str = ""  # a `python -m pretrain prepare` output folder (made with the model's tokenizer)
    split: str = "validation"  # its held-out split (the manifest's held-out slice)


@dataclass
class BenchmarkConfig:
    """A multiple-choice benchmark scored by letter logits during training (evaluation/)."""

    name: Literal["ceval", "cmmlu", "mmlu"] = "ceval"  # benchmark (also the metric prefix bench/<name>/)
    data: str = ""  # folder in the official layout (see evaluation/benchmarks.py), or "hub"
    split: str | None = None  # scored split; default: val (ceval, mmlu), test (cmmlu)
    shots: int = 0  # few-shot exemplars from dev
    max_items_per_subject: int | None = None  # cap per subject (keeps in-training evaluation short)
    every_steps: int = 0  # run at evaluations whose step is a multiple of this (0: at every evaluation)
    batch_size: int = 4  # prompts per forward
    max_length: int | None = None  # prompt tokens kept (default: the model's max_position_embeddings)
    contamination: str | None = None  # report of `python -m evaluation contamination`: + clean_accuracy, contaminated_accuracy


@dataclass
class ReadingEvalConfig:
    """A reading-comprehension set scored during training without generating: its reference answers read
    after their prompts (evaluation/answer_scorer.py), logged as reading/<name>/answer_bits_per_char and
    reading/<name>/greedy_answer; the same prompts as `evaluation reading --shots --max-questions --seed`."""

    name: str = ""  # e.g. cmrc ([A-Za-z0-9_-]; the metric prefix reading/<name>/)
    file: str = ""  # a file in SQuAD's JSON layout (CMRC 2018, DRCD, SQuAD)
    shots: int = 1  # solved exemplars (their answer sentences) from other articles
    max_questions: int = 200  # a seeded sample keeps in-training evaluation short
    seed: int = 0  # chooses the sample and the exemplars
    every_steps: int = 0  # run at evaluations whose step is a multiple of this (0: at every evaluation)
    batch_size: int = 4  # prompts per forward


@dataclass
class MathEvalConfig:
    """A math set scored during training without generating: each reference worked solution read after its
    few-shot prompt (evaluation/answer_scorer.py), logged as math/<name>/solution_bits_per_char, and whether greedy
    decoding writes the final answer after the reference's reasoning, math/<name>/answer_greedy; the same prompts
    and numbers as `evaluation math --shots --shots-from --max-items --seed` reports in its reference columns."""

    name: str = ""  # e.g. gsm8k ([A-Za-z0-9_-]; the metric prefix math/<name>/)
    file: str = ""  # GSM8K/CMATH-style .jsonl or .json, MGSM .tsv (evaluation/math_data.py)
    shots_from: str | None = None  # worked exemplars from this file (GSM8K's train split); default: the set itself
    shots: int = 3  # worked exemplars before each problem
    max_items: int = 200  # a seeded sample keeps in-training evaluation short
    seed: int = 0  # chooses the sample and the exemplars
    max_new_tokens: int = 512  # as `evaluation math --max-new-tokens`: prompts get the model's positions less this
    every_steps: int = 0  # run at evaluations whose step is a multiple of this (0: at every evaluation)
    batch_size: int = 4  # requests per forward


@dataclass
class CodeEvalConfig:
    """A code set scored during training without generating: each task's canonical solution read after its prompt
    (evaluation/answer_scorer.py), logged as code/<name>/solution_bits_per_char; the same prompts and number as
    `evaluation code --max-items --max-new-tokens` reports in its reference column. Where continued pretraining on
    Chinese text costs the model its Python, this rises (a guard: humaneval.solution_bits_per_char: 0.05)."""

    name: str = ""  # e.g. humaneval ([A-Za-z0-9_-]; the metric prefix code/<name>/)
    file: str = "humaneval"  # humaneval (the pinned HumanEval) or a .jsonl/.jsonl.gz in its layout with canonical_solution
    max_items: int | None = None  # the first N tasks (HumanEval's 164 read in seconds)
    max_new_tokens: int = 512  # as `evaluation code --max-new-tokens`: prompts get the model's positions less this
    every_steps: int = 0  # run at evaluations whose step is a multiple of this (0: at every evaluation)
    batch_size: int = 4  # requests per forward


@dataclass
class EvalConfig:
    every_steps: int = 500  # validate every N optimizer steps (0: only at the end)
    at_start: bool = False  # also validate before the first step (a baseline for the curve)
    micro_batch_size: int | None = None  # default: batch.micro_batch_size
    max_batches: int | None = None  # cap per evaluation (bits/char is only reported on the full set)
    sets: list[EvalSetConfig] = field(default_factory=list)  # named held-out sets (zh, en, code ...)
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)  # C-Eval / CMMLU / MMLU by letter logits
    reading: list[ReadingEvalConfig] = field(default_factory=list)  # CMRC 2018 / DRCD / SQuAD, reference answers read
    math: list[MathEvalConfig] = field(default_factory=list)  # GSM8K / CMATH / MGSM, reference solutions read
    code: list[CodeEvalConfig] = field(default_factory=list)  # HumanEval and its kin, canonical solutions read
    base: str = "auto"  # base-model numbers: auto (the starting model, before step 1, once), none, or a JSON path
    guard: dict[str, float] = field(default_factory=dict)  # "<set|benchmark|reading|math|code>.<metric>": allowed change from base
    guard_action: Literal["warn", "stop"] = "warn"  # stop: save a checkpoint and end the run cleanly

    def validate(self) -> list[str]:
        problems = []
        if self.every_steps < 0:
            problems.append(f"every_steps: must be >= 0, got {self.every_steps}")
        for name in ("micro_batch_size", "max_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name}: must be >= 1 (or null), got {value}")
        from .watch_config import check_watch_config

        return problems + check_watch_config(self)
