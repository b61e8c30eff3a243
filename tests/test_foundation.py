"""Foundation: CLI registries resolve, config loader reports every problem, atomic outputs."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from typing import Literal

import pytest

from zhllama.config import build, load_config
from zhllama.errors import UserError
from zhllama.files import atomic_output_dir


@dataclasses.dataclass
class _Optim:
    lr: float = 1e-4
    """learning rate"""


@dataclasses.dataclass
class _Cfg:
    mode: Literal["full", "lora"] = "full"
    steps: int = 10
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj"])
    optim: _Optim = dataclasses.field(default_factory=_Optim)

    def validate(self) -> list[str]:
        return ["steps: must be positive"] if self.steps <= 0 else []


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mode: lora\noptim:\n  lr: 2e-4\n")
    cfg = load_config(_Cfg, path, ["steps=3", "targets=[q_proj,v_proj]"])
    assert cfg.mode == "lora" and cfg.steps == 3 and cfg.optim.lr == 2e-4
    assert cfg.targets == ["q_proj", "v_proj"]


def test_config_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mode: qlora\nsteps: many\nbogus: 1\n")
    with pytest.raises(UserError) as info:
        load_config(_Cfg, path, ["optim.lr=fast"])
    msg = str(info.value)
    assert str(path) in msg
    for key in ("mode", "steps", "bogus", "optim.lr"):
        assert key in msg
    assert "4 problems" in msg


def test_config_validate_hook():
    with pytest.raises(UserError, match="steps: must be positive"):
        load_config(_Cfg, None, ["steps=0"])


@dataclasses.dataclass
class _Section:
    lr: float = 1e-4

    UNKNOWN_KEY = "unknown key"

    def validate(self) -> list[str]:
        return ["lr: must be > 0"] if self.lr <= 0 else []


@dataclasses.dataclass
class _Outer:
    steps: int = 10
    opt: _Section = dataclasses.field(default_factory=_Section)

    def validate(self) -> list[str]:
        return ["steps: must be positive"] if self.steps <= 0 else []


def test_build_validates_each_section_whose_types_passed():
    problems: list[str] = []
    build(_Outer, {"steps": 0, "opt": {"lr": -1.0, "beta": 2}}, problems, "item[3].")
    # the unknown key does not stop opt.validate; both sections report their values
    assert problems == ["item[3].opt.beta: unknown key (known: lr)", "item[3].opt.lr: must be > 0",
                        "item[3].steps: must be positive"]
    problems = []
    build(_Outer, {"steps": "many", "opt": {"lr": -1.0}}, problems)
    # steps has the wrong type: _Outer.validate must not run on it; opt still validates
    assert problems == ["steps: expected an integer, got 'many'", "opt.lr: must be > 0"]


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "done.txt").write_text("x")
    assert (out / "done.txt").exists()
    with pytest.raises(UserError, match="already exists"):
        with atomic_output_dir(out):
            pass


@pytest.mark.parametrize("phase", ["vocab", "pretrain", "sft", "evaluation", "corpora"])
def test_command_registry_entries_import(phase):
    registry = importlib.import_module(f"{phase}.__main__").COMMANDS
    for name, module_name in registry.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), module_name
        assert module.__doc__ and f"python -m {phase} {name}" in module.__doc__, (
            f"{module_name} docstring must show the exact command")


def test_unknown_command_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "vocab", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def test_deepspeed_launcher_local_rank_is_stripped():
    from zhllama.cli import strip_launcher_args

    assert strip_launcher_args(["--local_rank=1", "train", "--config", "x.yaml"]) == ["train", "--config", "x.yaml"]
    assert strip_launcher_args(["train", "--local-rank", "0", "a=b"]) == ["train", "a=b"]


def test_outputs_get_ordinary_permissions_not_mkdtemp_private_ones(tmp_path):
    import os
    import stat

    from zhllama.files import write_json_atomic

    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            write_json_atomic(tmp / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "report.json").stat().st_mode) == 0o644
