"""Every shipped preset loads: pretrain/configs/*.yaml and the DeepSpeed JSON presets."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import DS_PRESET_DIR, DS_PRESETS, TrainConfig
from pretrain.train_cli import PretrainConfig
from zhllama.config import load_config
from zhllama.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "pretrain" / "configs").glob("*.yaml"))


def test_the_required_presets_ship():
    names = {p.name for p in CONFIGS}
    assert {"tiny_cpu.yaml", "llama2_7b_8xA100.yaml"} <= names
    assert {p.stem for p in DS_PRESET_DIR.glob("*.json")} == set(DS_PRESETS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_yaml_preset_loads(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.model.path and cfg.data.dir and cfg.deepspeed.preset in DS_PRESETS


@pytest.mark.parametrize("preset", DS_PRESETS)
def test_every_deepspeed_preset_fills_its_autos(preset):
    from engine.dist import build_ds_config

    cfg = load_config(PretrainConfig, CONFIGS[0], [f"deepspeed.preset={preset}", "model.dtype=bfloat16",
                                                   "batch.global_batch_size=null"])
    ds = build_ds_config(cfg, world_size=8, hidden_size=4096)
    assert ds["train_batch_size"] == cfg.batch.micro_batch_size * cfg.batch.gradient_accumulation_steps * 8
    assert ds["gradient_clipping"] == cfg.optim.max_grad_norm
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert "auto" not in repr(ds)


def test_7b_preset_keeps_its_global_batch_on_any_number_of_gpus_that_divides_it():
    preset = Path(CONFIGS[0]).with_name("llama2_7b_8xA100.yaml")
    for gpus, accumulation in ((8, 8), (16, 4), (4, 16), (64, 1)):
        cfg = load_config(PretrainConfig, preset)
        assert cfg.batch.resolve(gpus) == 256 and cfg.batch.gradient_accumulation_steps == accumulation
    with pytest.raises(UserError, match=r"global_batch_size=256 is not a multiple of micro_batch_size \(4\) x 3 "
                                        r"ranks; run on one of \[1, 2, 4, 8, 16, 32, 64\] ranks"):
        load_config(PretrainConfig, preset).batch.resolve(3)
    fixed = load_config(PretrainConfig, preset, ["batch.gradient_accumulation_steps=8"])  # set: only checked
    assert fixed.batch.resolve(8) == 256
    with pytest.raises(UserError, match=r"x 4 ranks = 128; change one of them \(or leave gradient_accumulation"):
        fixed.batch.resolve(4)
    assert load_config(PretrainConfig, preset, ["batch.global_batch_size=null"]).batch.resolve(2) == 8  # 4 x 1 x 2


def test_validation_reports_every_problem_at_once():
    with pytest.raises(UserError) as err:
        load_config(TrainConfig, None, ["mode=adapters", "optim.lr=-1", "batch.micro_batch_size=0",
                                        "schedule.warmup_steps=50", "schedule.max_steps=10"])
    text = str(err.value)
    assert "mode: expected one of ['full', 'lora', 'embeddings']" in text
    with pytest.raises(UserError) as err:
        load_config(TrainConfig, None, ["optim.lr=-1", "batch.micro_batch_size=0", "schedule.warmup_steps=50",
                                        "schedule.max_steps=10", "checkpoint.keep_last=0",
                                        "embeddings.train_new_rows_only=true"])
    problems = err.value.problems
    for needle in ("model.path: required", "optim.lr: must be > 0", "batch.micro_batch_size: must be >= 1",
                   "warmup_steps (50) exceeds max_steps (10)", "checkpoint.keep_last", "only meaningful with mode=embeddings"):
        assert any(needle in p for p in problems), (needle, problems)


def test_deepspeed_json_may_not_set_what_the_engine_owns(tmp_path):
    from engine.dist import build_ds_config

    preset = tmp_path / "mine.json"
    preset.write_text('{"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 3}}')
    cfg = load_config(TrainConfig, None, ["model.path=x", f"deepspeed.preset={preset}"])
    with pytest.raises(UserError, match="set it in one place"):
        build_ds_config(cfg, world_size=2, hidden_size=64)


def test_zero3_on_one_rank_gets_a_hint_towards_zero2_and_nothing_else_does():
    from engine.dist import build_ds_config, single_rank_zero3_hint

    def hint(preset: str, world: int, *extra: str):
        cfg = load_config(TrainConfig, None, ["model.path=x", f"deepspeed.preset={preset}", *extra])
        return single_rank_zero3_hint(build_ds_config(cfg, world_size=world, hidden_size=64), world)

    assert "deepspeed.preset=zero2" in hint("zero3", 1)
    assert hint("zero3", 2) is None and hint("zero2", 1) is None
    assert hint("zero3", 1, "deepspeed.overrides={zero_optimization: {offload_param: {device: cpu}}}") is None


def test_whole_layer_fetching_prefetches_one_layer_ahead(tmp_path):
    from engine.dist import build_ds_config
    from engine.tiny import make_tiny_model, make_tiny_tokenizer
    from zhllama.model_folder import first_layer_numel

    model = make_tiny_model(tmp_path / "m", make_tiny_tokenizer(tmp_path / "t"), hidden=32, layers=2, heads=4)
    from safetensors.torch import load_file

    layer0 = sum(t.numel() for name, t in load_file(str(model / "model.safetensors")).items() if ".layers.0." in name)
    assert first_layer_numel(model) == layer0 > 0 and first_layer_numel(tmp_path / "t") == 0

    def prefetch(fetch: str, layer_numel: int) -> int:
        cfg = load_config(TrainConfig, None, ["model.path=x", f"deepspeed.zero3_fetch={fetch}"])
        ds = build_ds_config(cfg, world_size=8, hidden_size=4096, layer_numel=layer_numel)
        return ds["zero_optimization"]["stage3_prefetch_bucket_size"]

    seven_b_layer = 202_383_360  # LLaMA-2-7B: 4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096
    assert prefetch("layer", seven_b_layer) == seven_b_layer  # the next layer whole, while this one computes
    assert prefetch("module", seven_b_layer) == int(0.9 * 4096 * 4096)  # the HF integration's value
    assert prefetch("layer", 0) == int(0.9 * 4096 * 4096)  # no layer found: never less


def test_lora_adapters_stay_whole_under_zero3_and_full_mode_keeps_the_hf_threshold():
    from engine.dist import build_ds_config

    def threshold(mode: str) -> int:
        cfg = load_config(PretrainConfig, Path(CONFIGS[0]).with_name("llama2_7b_8xA100.yaml"),
                          [f"mode={mode}", "lora.r=64", "deepspeed.preset=zero3"])
        ds = build_ds_config(cfg, world_size=8, hidden_size=4096, widest=11008)
        return ds["zero_optimization"]["stage3_param_persistence_threshold"]

    assert threshold("full") == 10 * 4096
    assert threshold("lora") == 64 * 11008 + 1  # the widest LoRA matrix (down_proj's A) is not partitioned
