"""`sft export`: merged logits equal the adapter model's; vocabulary mismatches are explained."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers_sft import load_tokenizer, tiny_model, tiny_tokenizer

from sft.export import export_merged
from sft.templates import TEMPLATE_FILE, TemplateSpec
from zhllama.errors import UserError


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    return tiny_model(root / "base", tiny_tokenizer(root / "tok"))


def _fake_run(base: Path, run: Path, extra_tokens: int = 0, tokenizer_tokens: int | None = None):
    """A LoRA 'run output' as the engine writes it: final/ = adapter + tokenizer + template.

    LoRA B matrices and the saved embedding/lm_head copies are random, so the merge must really
    add them. ``extra_tokens`` adds rows (e.g. a <pad>) to the model the adapter was trained on.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(base)
    if extra_tokens:
        tok.add_special_tokens({"pad_token": "<pad>"})
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if extra_tokens:
        model.resize_token_embeddings(model.get_input_embeddings().weight.shape[0] + extra_tokens)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  modules_to_save=["embed_tokens", "lm_head"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    final = run / "final"
    peft_model.save_pretrained(final)
    tok.save_pretrained(final)
    if tokenizer_tokens is not None:  # a run folder whose tokenizer is not the one it trained with
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(base / name, final / name)
    TemplateSpec("chinese-alpaca-2").save(final)
    return peft_model.eval(), tok


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_logits_equal_adapter_logits(base, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter_model, tok = _fake_run(base, tmp_path / "run")
    report = export_merged(base, tmp_path / "run", tmp_path / "merged")
    out = tmp_path / "merged"
    assert report.kind == "lora-merge" and report.adapter_embedding_rows == {"embed_tokens": 512, "lm_head": 512}
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert TemplateSpec.load(out).name == "chinese-alpaca-2" and (out / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([tok("春眠不觉晓，处处闻啼鸟。 The quick brown fox.")["input_ids"]])
    torch.testing.assert_close(_logits(merged, ids), _logits(adapter_model, ids), atol=1e-5, rtol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    assert (_logits(plain, ids) - _logits(merged, ids)).abs().max() > 1e-2  # the adapter did change it
    with pytest.raises(UserError, match="already exists"):
        export_merged(base, tmp_path / "run", out)


def test_pad_row_mismatch_is_resolved_by_the_runs_tokenizer(base, tmp_path):
    """The 49,953 / 49,954 case in miniature: base 512 rows, run trained with <pad> (513)."""
    from transformers import AutoModelForCausalLM

    adapter_model, tok = _fake_run(base, tmp_path / "run", extra_tokens=1)
    report = export_merged(base, tmp_path / "run", tmp_path / "merged")
    assert report.base_rows == 512 and report.resized_base_to == 513 and report.tokenizer_tokens == 513
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
    ids = torch.tensor([tok("白日依山尽<pad>")["input_ids"]])
    assert int(ids.max()) == 512  # the <pad> row exists and is the trained one
    torch.testing.assert_close(_logits(merged, ids), _logits(adapter_model, ids), atol=1e-5, rtol=1e-5)


def test_unexplained_vocab_mismatch_is_refused_with_the_numbers(base, tmp_path):
    _fake_run(base, tmp_path / "run", extra_tokens=1, tokenizer_tokens=512)
    with pytest.raises(UserError) as info:
        export_merged(base, tmp_path / "run", tmp_path / "merged")
    msg = str(info.value)
    assert "512 embedding rows" in msg and "513" in msg and "49,953" in msg and "49,954" in msg
    assert not (tmp_path / "merged").exists()


def test_export_needs_a_template_or_refuses(base, tmp_path):
    _fake_run(base, tmp_path / "run")
    (tmp_path / "run" / "final" / TEMPLATE_FILE).unlink()
    (tmp_path / "run" / "sft_data_report.json").write_text("{}")  # an `sft train` run
    with pytest.raises(UserError, match="--template"):
        export_merged(base, tmp_path / "run", tmp_path / "merged")
    report = export_merged(base, tmp_path / "run", tmp_path / "merged", template="alpaca")
    assert TemplateSpec.load(tmp_path / "merged").name == "alpaca" and report.kind == "lora-merge"


def test_a_pretraining_run_merges_into_a_base_model_without_a_template(base, tmp_path):
    import json

    _fake_run(base, tmp_path / "run")
    (tmp_path / "run" / "final" / TEMPLATE_FILE).unlink()  # `pretrain train` writes no template, no SFT report
    report = export_merged(base, tmp_path / "run", tmp_path / "merged")
    assert report.kind == "lora-merge" and report.template is None
    assert not (tmp_path / "merged" / TEMPLATE_FILE).exists()
    assert "chat_template" not in json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())


def test_an_adapter_is_not_merged_into_another_base_of_the_same_shape(base, tmp_path):
    """Was: merged silently (notes: []). The run knows its base; another one is refused unless --force."""
    import json

    from zhllama.model_fingerprint import model_fingerprint

    _fake_run(base, tmp_path / "run")
    other = tiny_model(tmp_path / "other", base, seed=1)  # same config and shapes, other weights
    with pytest.raises(UserError, match=r"--base .*other is not the model the adapter .* was trained on") as info:
        export_merged(other, tmp_path / "run", tmp_path / "merged")
    assert "--force" in str(info.value) and not (tmp_path / "merged").exists()
    report = export_merged(other, tmp_path / "run", tmp_path / "merged", force=True)
    assert report.forced and any(n.startswith("--force") for n in report.notes)
    saved = json.loads((tmp_path / "merged" / "export_report.json").read_text())
    assert saved["forced"] is True

    # The engine records the base's fingerprint: a copy of the right base elsewhere is accepted.
    (tmp_path / "run" / "final" / "train_report.json").write_text(json.dumps(
        {"base_model": "/gone/base", "base_model_fingerprint": model_fingerprint(base)}))
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    report = export_merged(copy, tmp_path / "run", tmp_path / "merged2")
    assert any("verified" in n for n in report.notes) and not report.forced
    with pytest.raises(UserError, match="is not the model the adapter"):
        export_merged(other, tmp_path / "run", tmp_path / "merged3")


def test_a_base_of_another_hidden_size_is_one_clear_error(base, tmp_path):
    _fake_run(base, tmp_path / "run")
    wide = tiny_model(tmp_path / "wide", base, hidden=64)
    with pytest.raises(UserError, match=r"config differs: .*hidden_size: 32 vs 64"):
        export_merged(wide, tmp_path / "run", tmp_path / "merged")
    with pytest.raises(UserError, match=r"does not fit --base .*wide"):  # was a PEFT size-mismatch traceback
        export_merged(wide, tmp_path / "run", tmp_path / "merged", force=True)
    assert not (tmp_path / "merged").exists()


def test_a_lora_run_with_a_longer_context_merges_into_a_model_with_its_positions(base, tmp_path):
    """The run's model.rope_scaling is in its settings, not in the adapter: the merge must carry it over."""
    import json

    _fake_run(base, tmp_path / "run")
    settings = {"model.rope_scaling": {"rope_type": "linear", "factor": 4}, "model.max_position_embeddings": None}
    (tmp_path / "run" / "final" / "train_report.json").write_text(json.dumps({"settings": settings, "mode": "lora"}))
    report = export_merged(base, tmp_path / "run", tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    before = json.loads((base / "config.json").read_text())["max_position_embeddings"]
    assert config["max_position_embeddings"] == 4 * before
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 4
    assert any(f"RoPE linear x4 from the run's settings: positions {before} -> {4 * before}" in n for n in report.notes)
    # a larger base alone (adjusted base frequency) reaches the merged model too
    settings = {"model.rope_scaling": {"rope_theta": 1e6}, "model.max_position_embeddings": 2 * before}
    (tmp_path / "run" / "final" / "train_report.json").write_text(json.dumps({"settings": settings, "mode": "lora"}))
    report = export_merged(base, tmp_path / "run", tmp_path / "based")
    config = json.loads((tmp_path / "based" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 1e6 and config["max_position_embeddings"] == 2 * before
    assert any(f"RoPE base 1,000,000 from the run's settings: positions {before} -> {2 * before}" in n
               for n in report.notes)
