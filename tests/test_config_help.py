"""`pretrain train --help` / `sft train --help` list every setting with its dotted key, type, default
and the `# comment` doc of its dataclass field (zhllama/config_help.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.train_cli import PretrainConfig
from sft.config import SFTConfig
from zhllama.config import config_to_dict
from zhllama.config_help import config_help, settings

REPO = Path(__file__).resolve().parents[1]


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("overrides", "rewards"):  # free mappings (deepspeed, grpo)
            out += _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def test_optim_lr_shows_type_default_and_doc():
    (lr,) = [s for s in settings(PretrainConfig) if s.key == "optim.lr"]
    assert (lr.type, lr.default, lr.doc) == ("float", "0.0002", "peak learning rate")
    line = next(x for x in config_help(PretrainConfig).splitlines() if x.strip().startswith("optim.lr "))
    assert "float = 0.0002" in line and line.endswith("# peak learning rate")


@pytest.mark.parametrize("cls", [PretrainConfig, SFTConfig], ids=lambda c: c.__name__)
def test_every_field_appears_with_a_doc(cls):
    rows = {s.key: s for s in settings(cls)}
    expected = _leaf_keys(config_to_dict(cls()))
    assert [k for k in expected if k not in rows] == []
    assert [k for k, s in rows.items() if not s.doc] == []  # a field added without its `# doc` fails here
    text = config_help(cls)
    assert all(f"  {k} " in text for k in expected)


def test_literals_optionals_multiline_defaults_and_lists_of_sections():
    rows = {s.key: s for s in settings(SFTConfig)}
    assert rows["mode"].type == "full|lora|embeddings" and rows["mode"].default == "full"
    assert rows["model.tokenizer"].type == "str | None" and rows["model.tokenizer"].default == "null"
    # the default spans three lines; its comment follows the closing parenthesis
    assert rows["lora.targets"].doc.startswith("module names that get LoRA adapters")
    assert rows["lora.targets"].default.startswith("[q_proj, k_proj")
    assert rows["data.files[].weight"].type == "float" and "floor(w)" in rows["data.files[].weight"].doc
    assert rows["data.cache_dir"].default == "outputs/sft_cache" and rows["data.manifest"].default == "null"


def test_a_field_comment_is_read_from_the_source(tmp_path, monkeypatch):
    module = tmp_path / "fake_cfg.py"
    module.write_text("from dataclasses import dataclass\n\n@dataclass\nclass C:\n"
                      "    a: int = 1  # the a setting\n    b: str = 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_cfg

    rows = {s.key: s for s in settings(fake_cfg.C)}
    assert rows["a"].doc == "the a setting" and rows["b"].doc == "" and rows["b"].default == "x"


@pytest.mark.parametrize("phase", ["pretrain", "sft"])
def test_train_help_lists_the_settings(phase):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", phase, "train", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "optim.lr" in proc.stdout and "# peak learning rate" in proc.stdout
    assert "data.max_seq_length" in proc.stdout if phase == "sft" else "data.dir" in proc.stdout
