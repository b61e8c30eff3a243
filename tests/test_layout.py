"""The package layout DEVELOPERS.md promises, checked on the source with `ast` (nothing is imported):

- a phase package (vocab, pretrain, sft) never imports another phase package or the demo; phases
  share code only through zhllama/, engine/, corpora/ and evaluation/;
- demo/ is the end-to-end driver at the top of the graph: it may import phases (it reuses their
  scoring and loading helpers, e.g. vocab.bpc for bits/char and sft.templates for the prompt it
  scores), and nothing else may import demo;
- shared packages import no phase;
- benchmarks/ never import from tests/ (benchmarks run where tests are not installed), and test
  modules share code through tests/helpers_*.py and conftest.py, never by importing each other;
- every test module that starts torchrun is marked `distributed`, so `make test-fast` skips it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHASES = ("vocab", "pretrain", "sft")
SHARED = ("zhllama", "engine", "corpora", "evaluation")
# package -> top-level project packages it may import (besides itself)
ALLOWED = {
    **{phase: set(SHARED) for phase in PHASES},
    **{shared: set(SHARED) for shared in SHARED},
    "demo": set(SHARED) | set(PHASES),  # the driver: see the module docstring
}
PROJECT = set(ALLOWED) | {"demo", "tests", "benchmarks"}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) for every absolute import in ``path``, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def forbidden_imports(package: str, root: Path = REPO) -> list[str]:
    allowed = ALLOWED[package] | {package}
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        for name, line in imported_packages(path):
            if name in PROJECT and name not in allowed:
                bad.append(f"{path.relative_to(root)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_layout_allows(package):
    if not (REPO / package).is_dir():
        pytest.skip(f"{package}/ is not in this checkout")
    assert forbidden_imports(package) == []


def test_the_check_catches_a_phase_importing_another(tmp_path):
    # The rule must be able to fail: a fake phase importing another phase is reported with its line.
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "x.py").write_text("import json\n\ndef f():\n    from vocab.bpc import windows\n")
    assert forbidden_imports("sft", tmp_path) == ["sft/x.py:4 imports vocab"]


def test_benchmarks_do_not_import_tests():
    bad = [f"{p.relative_to(REPO)}:{line}" for p in sorted((REPO / "benchmarks").rglob("*.py"))
           for name, line in imported_packages(p) if name == "tests" or name.startswith(("helpers_", "conftest"))]
    assert bad == []


def test_test_modules_do_not_import_each_other():
    bad = [f"{p.name}:{line} imports {name}" for p in sorted((REPO / "tests").glob("*.py"))
           for name, line in imported_packages(p) if name.startswith("test_")]
    assert bad == []


def test_modules_that_launch_torchrun_are_marked_distributed():
    unmarked = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        launches = "nproc_per_node" in text or "torch.distributed.run" in text
        if launches and "pytest.mark.distributed" not in text:
            unmarked.append(path.name)
    assert unmarked == []
