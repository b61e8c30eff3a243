"""Every training mode in bfloat16 (and float16 where DeepSpeed's accelerator supports it) under ZeRO-3.

The fp32 tests (test_engine_distributed, test_sft_train) prove what each mode trains; GPU runs use
bf16, where PEFT's fp32 adapters beside bf16 weights once crashed ``deepspeed.initialize``
(defragment: one dtype per flat buffer). One 2-rank torchrun runs every (dtype, phase, mode) a few
steps in sequence — pretraining on packed blocks, SFT on padded batches, DPO on pairs, KTO on those pairs' two
verdicts, GRPO on answers it generates in that dtype, distillation from a teacher loaded in it, and pretraining (LoRA) and SFT
(full) with 2 ranks sharing each row (deepspeed.sequence_parallel) — and rank 0 saves each
run's consolidated weights; the tests below check finite falling loss and trained/frozen weights.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PT_CONFIG = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"
SFT_CONFIG = REPO / "sft" / "configs" / "tiny_cpu.yaml"
DPO_CONFIG = REPO / "sft" / "configs" / "dpo_tiny_cpu.yaml"  # LoRA without trained embeddings
KTO_CONFIG = REPO / "sft" / "configs" / "kto_tiny_cpu.yaml"  # the same
GRPO_CONFIG = REPO / "sft" / "configs" / "grpo_tiny_cpu.yaml"  # the same; answers generated in the dtype
DISTILL_CONFIG = REPO / "sft" / "configs" / "distill_tiny_cpu.yaml"  # teacher and student's answers in the dtype
BASE_ROWS = 300  # "embeddings, new rows only": rows below this stay exact
MODES = {
    "full": ["mode=full"],
    "lora": ["mode=lora", "deepspeed.overrides={}"],  # the preset's own persistence threshold, as on GPUs
    "lora_zero2": ["mode=lora", "deepspeed.preset=zero2", "deepspeed.overrides={}"],  # the 7B LoRA presets' stage
    "embeddings": ["mode=embeddings"],
    "new_rows": ["mode=embeddings", "embeddings.train_new_rows_only=true", f"embeddings.base_vocab_size={BASE_ROWS}"],
    # the 2 ranks share each row (engine/sequence_parallel.py): the heads' exchange in the dtype
    "full_sp": ["mode=full", "deepspeed.sequence_parallel=2"],
    "lora_sp": ["mode=lora", "deepspeed.overrides={}", "deepspeed.sequence_parallel=2"],
}
WHOLE_ROW_MODES = [m for m in MODES if not m.endswith("_sp")]
COMMON = ["schedule.max_steps=4", "schedule.warmup_steps=0", "optim.lr=1e-2", "checkpoint.every_steps=0",
          "eval.every_steps=0", "logging.wandb=disabled", "logging.tensorboard=false", "logging.plot=false",
          "logging.progress=false", "batch.micro_batch_size=2", "batch.gradient_accumulation_steps=1"]
pytestmark = pytest.mark.distributed


def _fp16_supported() -> bool:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_fp16_supported())


def _runs() -> list[tuple[str, str, str]]:
    dtypes = ["bfloat16"] + (["float16"] if _fp16_supported() else [])
    return [(d, phase, m) for d in dtypes for phase in ("pt", "sft") for m in WHOLE_ROW_MODES] + \
        [(d, "pt", "lora_sp") for d in dtypes] + [(d, "sft", "full_sp") for d in dtypes] + \
        [(d, "dpo", m) for d in dtypes for m in ("full", "lora")] + \
        [(d, phase, "lora") for d in dtypes for phase in ("kto", "grpo", "distill")]


def _train_one(spec: dict, dtype: str, phase: str, mode: str) -> None:
    """One run on this rank; rank 0 writes the consolidated weights and the metrics."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from engine.export import consolidated_state_dict

    from engine.loop import run_training
    from zhllama.config import load_config

    out = Path(spec["work"]) / f"{dtype}-{phase}-{mode}"
    overrides = [f"model.path={spec['model']}", f"output_dir={out}", f"model.dtype={dtype}", *COMMON, *MODES[mode]]
    if phase == "pt":
        from engine.tiny import TinyPacked
        from pretrain.train_cli import PretrainConfig

        cfg = load_config(PretrainConfig, PT_CONFIG, overrides + ["eval.at_start=true"])
        train_ds, eval_ds, collate = TinyPacked(cfg.model.path, 0, 24), TinyPacked(cfg.model.path, 3, 6), None
    else:
        from sft.config import SFTConfig
        from sft.train_cli import objective_of, prepare, prepare_grpo

        config = {"dpo": DPO_CONFIG, "kto": KTO_CONFIG, "grpo": GRPO_CONFIG, "distill": DISTILL_CONFIG}.get(phase,
                                                                                                         SFT_CONFIG)
        data = spec[{"kto": "dpo_data", "distill": "sft_data"}.get(phase, phase + "_data")]  # KTO: each pair's verdicts
        settings = {"grpo": ["grpo.rewards={zh_share: 1.0}", "grpo.generations=2", "grpo.max_new_tokens=4",
                             "grpo.beta=0.1",  # the reference: the policy with its adapters off, in the dtype
                             "grpo.iterations=2"],  # steps 2 and 4: the clipped ratio to the kept bf16/fp16 logps
                    "kto": ["kto.beta=0.5"],
                    "distill": [f"distill.teacher={spec['teacher']}", "distill.max_new_tokens=4",
                                "distill.lmbda=0.5"]}.get(phase, ["dpo.beta=0.5"])
        cfg = load_config(SFTConfig, config, overrides + settings + [
            f"data.files=[{{path: '{data}', weight: 4.0}}]", "data.eval_fraction=0.0", "data.max_seq_length=128",
            f"data.cache_dir={Path(spec['work']) / 'sft_cache'}"])
        _, _, train_ds, _, _, collate, *objective = prepare_grpo(cfg) if phase == "grpo" else prepare(cfg)
        eval_ds = train_ds  # the loss on the data it trains on must fall in 4 steps (GRPO: its reward is logged)
        cfg.eval.at_start = True
    objective = (objective[0] if objective else objective_of(cfg)) if phase != "pt" else None
    run = run_training(cfg, train_ds, eval_ds, collate, eval_characters=None, data_fingerprint=None,
                       tokenizer_fingerprint=None, objective=objective)
    state = consolidated_state_dict(run.engine)  # collective; the full weights on rank 0 (ZeRO-2 or 3)
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "engine_state.safetensors"))
        key = "eval/reward" if phase == "grpo" else "eval/loss"
        evals = [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines() if key in line]
        whole = {name: bool(getattr(p, "ds_persist", False)) for name, p in run.engine.module.named_parameters()}
        leaves = [name for name, m in run.engine.module.named_modules() if getattr(m, "_z3_leaf", False)]
        (out / "result.json").write_text(json.dumps({"evals": evals, "train_loss": run.metrics["train/loss"],
                                                     "whole_on_every_rank": whole, "zero3_leaf_modules": leaves}))


def _driver(spec: dict) -> None:
    import torch.distributed as dist

    for dtype, phase, mode in _runs():
        _train_one(spec, dtype, phase, mode)
    dist.barrier()  # leave together, as the CLI does (see test_engine_distributed._driver)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from engine.tiny import make_tiny_model, make_tiny_tokenizer

    from helpers_sft import ZH_RECORDS, write_json

    work = tmp_path_factory.mktemp("precision")
    tok = make_tiny_tokenizer(work / "tok")
    model = make_tiny_model(work / "model", tok, hidden=32, layers=2, heads=4)
    teacher = make_tiny_model(work / "teacher", tok, hidden=48, layers=2, heads=4, seed=3)  # distillation's
    data = write_json(work / "zh.json", ZH_RECORDS)
    pairs = write_json(work / "pairs.json", [{"instruction": r["instruction"], "input": r["input"],
                                              "chosen": r["output"], "rejected": "不知道。"} for r in ZH_RECORDS])
    prompts = write_json(work / "prompts.json", [{"instruction": r["instruction"], "input": r["input"]}
                                                 for r in ZH_RECORDS])
    spec = json.dumps({"model": str(model), "work": str(work), "sft_data": str(data), "dpo_data": str(pairs),
                       "grpo_data": str(prompts), "teacher": str(teacher)})
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), __file__, spec],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return work


def _original(model_dir: Path, dtype: str) -> dict:
    import torch
    from safetensors.torch import load_file

    return {k: v.to(getattr(torch, dtype)) for k, v in load_file(str(model_dir / "model.safetensors")).items()}


@pytest.mark.parametrize("dtype,phase,mode", _runs())
def test_mode_trains_in_half_precision(runs, dtype, phase, mode):
    import math

    import torch
    from safetensors.torch import load_file

    out = runs / f"{dtype}-{phase}-{mode}"
    mode = mode.removesuffix("_sp")  # sequence parallelism trains what its mode does
    result = json.loads((out / "result.json").read_text())
    evals = result["evals"]
    assert all(math.isfinite(v) for v in evals + [result["train_loss"]]), result
    assert len(evals) == 2 and (phase == "grpo" or evals[-1] < evals[0]), evals  # the loss falls
    after = load_file(str(out / "engine_state.safetensors"))
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    before = _original(runs / "model", dtype)
    embeddings = ("model.embed_tokens.weight", "lm_head.weight")
    if mode == "full":
        assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    elif mode.startswith("lora"):
        lora = [k for k in after if "lora_" in k]
        assert lora and all(after[k].dtype == getattr(torch, dtype) for k in lora)  # adapters in the model's dtype
        assert all(after[k].abs().sum() > 0 for k in lora if "lora_B" in k)  # started at zero, trained
        # ZeRO-3 would gather partitioned adapters every step (measured: LoRA slower than full training)
        whole = result["whole_on_every_rank"]
        if mode == "lora":  # ZeRO-3 (ZeRO-2 never partitions weights)
            assert any("lora_" in k for k in whole) and any(k.endswith("base_layer.weight") for k in whole)
            assert all(whole[k] for k in whole if "lora_" in k), {k: v for k, v in whole.items() if "lora_" in k}
            assert not any(whole[k] for k in whole if k.endswith("base_layer.weight"))  # the base stays partitioned
            # each decoder layer (its projections with their LoRA A/B) is gathered as one unit (deepspeed.zero3_fetch)
            leaves = result["zero3_leaf_modules"]
            assert len(leaves) == 2 and all(name.endswith(f"layers.{i}") for i, name in enumerate(leaves)), leaves
        for key, value in after.items():
            if "lora_" in key:
                continue
            original = key.replace("base_model.model.", "").replace(".base_layer", "")
            if original in embeddings and phase in ("pt", "sft"):
                # trained in full, in place (DPO, KTO and GRPO: lora.modules_to_save=[])
                assert not torch.equal(value, before[original]), key
            else:
                torch.testing.assert_close(value, before[original], rtol=0, atol=0, msg=key)  # frozen: bit-identical
    else:
        for key, value in after.items():
            if key not in embeddings:
                torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
            elif mode == "new_rows":
                torch.testing.assert_close(value[:BASE_ROWS], before[key][:BASE_ROWS], rtol=0, atol=0, msg=key)
                assert (value[BASE_ROWS:] != before[key][BASE_ROWS:]).any(), key
            else:
                assert not torch.equal(value, before[key]), key


if __name__ == "__main__":
    _driver(json.loads(sys.argv[1]))
