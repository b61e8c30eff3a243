"""Checks of the eval section's named sets, benchmarks and guard, and the metric each guard key watches.

Metric names: a set ``zh`` logs ``eval/zh/loss``, ``eval/zh/perplexity``, ``eval/zh/bits_per_char``;
a benchmark ``ceval`` logs ``bench/ceval/accuracy`` (+ ``bench/ceval/stem`` ... ``/hard``, and with a
contamination report ``/clean_accuracy`` and ``/contaminated_accuracy``); a reading set ``cmrc`` logs
``reading/cmrc/answer_bits_per_char`` and ``reading/cmrc/greedy_answer``; a math set ``gsm8k`` logs
``math/gsm8k/solution_bits_per_char`` and ``math/gsm8k/answer_greedy``; a code set ``humaneval`` logs
``code/humaneval/solution_bits_per_char``; the
phase's own validation split keeps ``eval/loss`` and ``eval/bits_per_char``. A guard key is
``<set or benchmark>.<metric>`` (``eval.<metric>`` for the validation split) and its value the
allowed change from the base model: ``en.bits_per_char: 0.05`` trips above base + 0.05,
``ceval.accuracy: -0.02`` trips below base - 0.02.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
SET_METRICS = ("loss", "perplexity", "bits_per_char")
BENCH_METRICS = ("accuracy", "stem", "social_science", "humanities", "other", "hard", "clean_accuracy",
                 "contaminated_accuracy")
CONTAMINATION_METRICS = ("clean_accuracy", "contaminated_accuracy")
READING_METRICS = ("answer_bits_per_char", "greedy_answer")
MATH_METRICS = ("solution_bits_per_char", "answer_greedy")
CODE_METRICS = ("solution_bits_per_char",)


def guard_metric(key: str, set_names: list[str], bench_names: list[str], reading_names=(), math_names=(),
                 code_names=()) -> str | None:
    """The logged metric a guard key watches, or None when the key names nothing known."""
    name, _, metric = key.partition(".")
    if name in code_names and metric in CODE_METRICS:
        return f"code/{name}/{metric}"
    if name in reading_names and metric in READING_METRICS:
        return f"reading/{name}/{metric}"
    if name in math_names and metric in MATH_METRICS:
        return f"math/{name}/{metric}"
    if name == "eval" and metric in SET_METRICS:
        return f"eval/{metric}"
    if name in set_names and metric in SET_METRICS:
        return f"eval/{name}/{metric}"
    if name in bench_names and metric in BENCH_METRICS:
        return f"bench/{name}/{metric}"
    return None


def check_watch_config(ev: Any) -> list[str]:
    problems: list[str] = []
    set_names = [s.name for s in ev.sets]
    bench_names = [b.name for b in ev.benchmarks]
    for i, s in enumerate(ev.sets):
        if not NAME.match(s.name or "") or s.name == "eval":
            problems.append(f"sets[{i}].name: expected letters, digits, _ or - (not 'eval'), got {s.name!r}")
        if not s.dir:
            problems.append(f"sets[{i}].dir: required (a `python -m pretrain prepare` output folder)")
    for i, b in enumerate(ev.benchmarks):
        if not b.data:
            problems.append(f"benchmarks[{i}].data: required (a folder in the official layout, or 'hub')")
        if b.shots < 0 or b.every_steps < 0 or b.batch_size < 1:
            problems.append(f"benchmarks[{i}]: shots and every_steps must be >= 0 and batch_size >= 1")
        if b.contamination is not None and not Path(b.contamination).is_file():
            problems.append(f"benchmarks[{i}].contamination: {b.contamination} is not a file (expected the OUT.json "
                            f"of `python -m evaluation contamination`)")
    reading_names = [r.name for r in ev.reading]
    math_names = [m.name for m in ev.math]
    code_names = [c.name for c in ev.code]
    problems += _reading_problems(ev.reading) + _math_problems(ev.math) + _code_problems(ev.code)
    groups = ((set_names, "sets"), (bench_names, "benchmarks"), (reading_names, "reading"), (math_names, "math"),
              (code_names, "code"))
    for names, what in groups:
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            problems.append(f"{what}: names must be unique, repeated: {dups}")
    everything = [n for names, _ in groups for n in set(names)]
    clash = sorted({n for n in everything if everything.count(n) > 1})
    if clash:
        problems.append(f"sets, benchmarks, reading, math and code share names {clash}")
    for key, value in ev.guard.items():
        if guard_metric(key, set_names, bench_names, reading_names, math_names, code_names) is None:
            problems.append(f"guard.{key}: expected <set>.{{{','.join(SET_METRICS)}}}, "
                            f"<benchmark>.{{{','.join(BENCH_METRICS)}}}, <reading>.{{{','.join(READING_METRICS)}}}, "
                            f"<math>.{{{','.join(MATH_METRICS)}}} or <code>.{{{','.join(CODE_METRICS)}}} with a set in "
                            f"{set_names}, a benchmark in {bench_names}, a reading set in {reading_names}, a math set "
                            f"in {math_names} or a code set in {code_names} (eval.<metric> for the validation split)")
        elif key.partition(".")[2] in CONTAMINATION_METRICS and not any(
                b.name == key.partition(".")[0] and b.contamination for b in ev.benchmarks):
            problems.append(f"guard.{key}: needs the benchmark's contamination report (benchmarks[].contamination)")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
            problems.append(f"guard.{key}: expected a non-zero number (+ bounds a rise, - a fall), got {value!r}")
    if ev.guard and ev.base == "none":
        problems.append("guard: needs base numbers; base is 'none'")
    return problems


def _reading_problems(reading: list) -> list[str]:
    problems = []
    for i, r in enumerate(reading):
        if not NAME.match(r.name or "") or r.name == "eval":
            problems.append(f"reading[{i}].name: expected letters, digits, _ or - (not 'eval'), got {r.name!r}")
        if not r.file or not Path(r.file).is_file():
            problems.append(f"reading[{i}].file: {r.file!r} is not a file (expected a SQuAD-layout JSON: CMRC 2018, "
                            f"DRCD, SQuAD)")
        if not 0 <= r.shots <= 8 or r.max_questions < 1 or r.every_steps < 0 or r.batch_size < 1:
            problems.append(f"reading[{i}]: shots must be 0..8, max_questions and batch_size >= 1, every_steps >= 0")
    return problems


def _math_problems(sets: list) -> list[str]:
    problems = []
    for i, m in enumerate(sets):
        if not NAME.match(m.name or "") or m.name == "eval":
            problems.append(f"math[{i}].name: expected letters, digits, _ or - (not 'eval'), got {m.name!r}")
        for field, path in (("file", m.file), ("shots_from", m.shots_from)):
            if (field == "file" or path) and (not path or not Path(path).is_file()):
                problems.append(f"math[{i}].{field}: {path!r} is not a file (expected GSM8K/CMATH-style JSON Lines, "
                                "JSON or MGSM .tsv)")
        if not 0 <= m.shots <= 8 or min(m.max_items, m.batch_size, m.max_new_tokens) < 1 or m.every_steps < 0:
            problems.append(f"math[{i}]: shots must be 0..8, max_items, max_new_tokens and batch_size >= 1, "
                            "every_steps >= 0")
    return problems


def _code_problems(sets: list) -> list[str]:
    problems = []
    for i, c in enumerate(sets):
        if not NAME.match(c.name or "") or c.name == "eval":
            problems.append(f"code[{i}].name: expected letters, digits, _ or - (not 'eval'), got {c.name!r}")
        if c.file != "humaneval" and (not c.file or not Path(c.file).is_file()):
            problems.append(f"code[{i}].file: {c.file!r} is neither humaneval nor a file (expected HumanEval-layout "
                            "JSON Lines with canonical_solution)")
        if (c.max_items is not None and c.max_items < 1) or min(c.batch_size, c.max_new_tokens) < 1 \
                or c.every_steps < 0:
            problems.append(f"code[{i}]: max_items, max_new_tokens and batch_size >= 1, every_steps >= 0")
    return problems
