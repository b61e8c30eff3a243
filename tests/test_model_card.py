"""Model cards: front matter the Hub reads, the lineage of runs, data licences (restricted ones called out),
nothing claimed that no report holds. The training chain writes them (tests/test_train_cli.py)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from zhllama.model_card import card_text, lineage_of, write_model_card


def _front(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def _run_report(base: Path, stage: str, sources: list[dict], lineage: list | None = None, **metrics) -> dict:
    return {"step": 100, "mode": "lora", "global_batch": 64, "base_model": str(base),
            "settings": {"optim.lr": 2e-4, "model.rope_scaling": {}}, "metrics": metrics,
            "data": {"stage": stage, "manifests": [{"name": f"{stage}_data", "sources": sources}]},
            "lineage": lineage or []}


def test_an_sft_model_card_names_its_base_licence_data_licences_and_chat_use(tmp_path):
    base = tmp_path / "hub" / "models--meta-llama--Llama-2-7b-hf" / "snapshots" / "abc123"
    base.mkdir(parents=True)
    (base / "README.md").write_text("---\nlicense: llama2\nlanguage: [en]\n---\n# Llama 2\n")
    pretrain = tmp_path / "pt"
    pretrain.mkdir()
    (pretrain / "train_report.json").write_text(json.dumps(_run_report(base, "pretrain", [
        {"name": "wiki_zh", "license": "CC BY-SA 4.0", "language": "zh-Hans", "weight": 1.0},
        {"name": "wiki_en", "license": "CC BY-SA 3.0", "language": "en", "weight": 0.5}])))
    sft = tmp_path / "sft-7b" / "final"
    sft.mkdir(parents=True)
    (sft / "train_report.json").write_text(json.dumps(_run_report(pretrain, "sft", [
        {"name": "alpaca_zh", "license": "research only (CC BY-NC 4.0 upstream)", "language": "zh-Hans",
         "weight": 1.0}], lineage=lineage_of(pretrain), **{"eval/loss": 1.234, "train/loss": 1.0})))
    (sft / "merge_report.json").write_text(json.dumps({"added": 17953, "base_vocab_size": 32000, "vocab_size": 49953}))
    (sft / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))

    text = write_model_card(sft).read_text()
    front = _front(text)
    assert front["license"] == "llama2" and front["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert front["language"] == ["en", "zh"] and front["library_name"] == "transformers"
    assert {"pretrain", "sft", "lora"} <= set(front["tags"])
    assert text.startswith("---\n") and "\n# sft-7b\n" in text  # final/ is titled by its run
    assert "17,953 Chinese pieces added to the base's 32,000" in text
    assert text.index("Continued pretraining: mode `lora`") < text.index("Instruction tuning (SFT): mode `lora`")
    assert "| instruction tuning (SFT) | alpaca_zh | zh-Hans | research only (CC BY-NC 4.0 upstream) | 1.0 |" in text
    assert "**Non-commercial or research-only data**: alpaca_zh." in text
    assert "| `eval/loss` | 1.234 |" in text and "train/loss" not in text
    assert "apply_chat_template" in text


def test_a_card_without_reports_claims_nothing(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    text = card_text(folder)
    front = _front(text)
    assert "license" not in front and "base_model" not in front
    assert "No training or vocabulary reports" in text and "No data sources were recorded" in text
    assert "Non-commercial" not in text and "## Evaluation" not in text
    assert 'tok("中国的首都是"' in text  # no chat template: plain completion


def test_lineage_follows_runs_and_merges_oldest_first(tmp_path):
    first = tmp_path / "a"
    first.mkdir()
    (first / "train_report.json").write_text(json.dumps(_run_report(tmp_path / "base", "pretrain", [])))
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "train_report.json").write_text(json.dumps(_run_report(first, "sft", [], lineage=lineage_of(first))))
    (merged / "export_report.json").write_text(json.dumps({"kind": "lora-merge", "base": str(first),
                                                           "adapter": "run/final"}))
    steps = lineage_of(merged)
    assert [(s["kind"], (s.get("data") or {}).get("stage")) for s in steps] == [
        ("train", "pretrain"), ("train", "sft"), ("merge", None)]
    assert steps[0]["base_model"] == str(tmp_path / "base") and steps[2]["adapter"] == "run/final"
    assert lineage_of(tmp_path / "nowhere") == []
