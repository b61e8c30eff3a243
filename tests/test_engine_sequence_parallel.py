"""Sequence parallelism (engine/sequence_parallel.py): two ranks sharing each sequence give what one rank
computes on the whole rows, with packed documents kept apart.

Two real launches (torchrun, gloo): the split attention against whole rows on a bare model (losses and
every weight's gradient; packed, padded, grouped-query, checkpointed), and `pretrain train` on 2 ranks
with deepspeed.sequence_parallel=2 against 1 rank without it (ZeRO-3, the same losses and weights). This
file is also the per-rank driver.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_dist import dist_env, torchrun_command

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"
SHORT = ["schedule.max_steps=6", "eval.every_steps=3", "checkpoint.every_steps=0", "logging.plot=false",
         "logging.tensorboard=false"]


def _packed_rows(vocab: int, length: int):
    """Two rows: documents that straddle the two ranks' halves and one that starts inside rank 1's half;
    labels -100 at document starts, as `pretrain prepare` writes them."""
    import torch

    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, vocab, (2, length), generator=gen)
    docs = [[5, length - 5], [length // 2 + 3, length // 2 - 3]]  # row 1: a boundary inside rank 1's half
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in docs])
    labels = ids.clone()
    labels[positions == 0] = -100
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def _padded_rows(vocab: int, length: int):
    """SFT's shape (sft/collate.py): right padding, an attention mask, prompts unlabelled, an odd length."""
    import torch

    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(3, vocab, (2, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, length - 6:] = 0
    ids[1, length - 6:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch, split=None, grads=True):
    import torch
    import torch.distributed as dist

    from engine.evaluate import forward_loss

    model.zero_grad()
    with torch.set_grad_enabled(grads):
        if split is None:
            loss_sum, count = forward_loss(model, batch, "cpu")
            if grads:
                (loss_sum / count).backward()
            return loss_sum.item() / count.item(), {n: p.grad.clone() for n, p in model.named_parameters() if grads}
        with split.micro(batch, "cpu") as (part, per_token):
            loss_sum, count = forward_loss(model, part, "cpu")
            if grads:
                (loss_sum * per_token).backward()
    total = torch.stack([loss_sum.detach().double(), count.double()])
    dist.all_reduce(total)
    if not grads:
        return (total[0] / total[1]).item(), {}
    grads = {}
    for name, p in model.named_parameters():  # each rank holds its positions' share of every gradient
        g = p.grad.clone()
        dist.all_reduce(g)
        grads[name] = g / split.groups.size  # DeepSpeed averages over all ranks
    return (total[0] / total[1]).item(), grads


def _attention_driver(spec: dict) -> None:
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.loss import install_fused_head
    from engine.sequence_parallel import SequenceSplit, install_attention, make_groups

    dist.init_process_group("gloo")
    groups = make_groups(2)
    results = []
    for case in spec["cases"]:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=case["kv_heads"], max_position_embeddings=128,
                             initializer_range=0.2,  # sharp attention: the documents' mask matters to the loss
                             attn_implementation=case["kernel"])
        model = LlamaForCausalLM(config)
        if case["fused"]:
            install_fused_head(model, 16)
        if case["checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        install_attention(case["kernel"])
        batch = (_packed_rows if case["rows"] == "packed" else _padded_rows)(61, case["length"])
        grads = case.get("grads", True)
        whole_loss, whole_grads = _loss_and_grads(model, batch, grads=grads)
        split_loss, split_grads = _loss_and_grads(model, batch, SequenceSplit(groups, model.config), grads)
        worst = max((((split_grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item()
                     for n, g in whole_grads.items()), default=0.0)
        flat = dict(batch, position_ids=torch.arange(case["length"]).expand(2, -1))
        flat.pop("attention_mask", None)
        results.append({**case, "whole": whole_loss, "split": split_loss, "worst_grad": worst,
                        "causal_only": _loss_and_grads(model, flat, grads=False)[0]})
    if dist.get_rank() == 0:
        Path(spec["out"]).write_text(json.dumps(results))
    dist.barrier()


def _train_driver(spec: dict) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from engine import loop
    from engine.export import consolidated_state_dict
    from engine.tiny import TinyPacked
    from pretrain.train_cli import PretrainConfig
    from zhllama.config import load_config

    cfg = load_config(PretrainConfig, TINY_CONFIG, spec["overrides"])
    train_ds, eval_ds = TinyPacked(cfg.model.path, 0, 48), TinyPacked(cfg.model.path, 3, 12)
    run = loop.run_training(cfg, train_ds, eval_ds, None, eval_characters=eval_ds.characters,
                            data_fingerprint="tiny-v1", tokenizer_fingerprint=None)
    state = consolidated_state_dict(run.engine)
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(cfg.output_dir) / "engine_state.safetensors"))
    dist.barrier()


def _launch(spec: dict, ranks: int = 2) -> str:
    proc = subprocess.run(torchrun_command(__file__, spec, ranks), cwd=REPO, env=dist_env(), capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


CASES = [
    {"kernel": "sdpa", "rows": "packed", "kv_heads": 4, "length": 24, "fused": True, "checkpointing": False},
    {"kernel": "sdpa", "rows": "packed", "kv_heads": 2, "length": 24, "fused": False, "checkpointing": True},
    {"kernel": "sdpa", "rows": "packed", "kv_heads": 1, "length": 24, "fused": True, "checkpointing": False},
    {"kernel": "sdpa", "rows": "padded", "kv_heads": 2, "length": 23, "fused": True, "checkpointing": False},
    # flex_attention has no backward on CPU (torch 2.13): its whole-row block mask is checked on the loss
    {"kernel": "flex_attention", "rows": "packed", "kv_heads": 2, "length": 24, "fused": True, "checkpointing": False,
     "grads": False},
]


@pytest.mark.distributed
def test_split_attention_equals_whole_rows(tmp_path):
    """Loss and every gradient as on whole rows: packed documents across and inside the halves, grouped-query
    attention with fewer key/value heads than ranks, gradient checkpointing (the split recomputed in backward),
    the plain-logits loss, and padded SFT rows of odd length (padded to a multiple of the group)."""
    out = tmp_path / "attention.json"
    _launch({"mode": "attention", "cases": CASES, "out": str(out)})
    for result in json.loads(out.read_text()):
        assert abs(result["split"] - result["whole"]) < 1e-5, result
        assert result["worst_grad"] < 1e-4, result
        if result["rows"] == "packed":  # the check can fail: these rows' loss depends on the documents' mask
            assert abs(result["causal_only"] - result["whole"]) > 1e-3, result


def test_pad_rows_shifts_on_the_whole_row_and_pads_a_document_of_its_own():
    import torch

    from engine.sequence_parallel import pad_rows

    batch = {"input_ids": torch.tensor([[7, 8, 9, 10, 11]]), "labels": torch.tensor([[-100, 8, 9, -100, 11]])}
    whole = pad_rows(batch, 4)
    assert whole["targets"].tolist() == [[8, 9, -100, 11, -100, -100, -100, -100]]
    assert whole["input_ids"].tolist() == [[7, 8, 9, 10, 11, 0, 0, 0]]
    assert whole["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert pad_rows(batch, 5)["targets"].shape == (1, 5)


def test_settings_refused_with_sequence_parallelism(tmp_path):
    from pretrain.train_cli import PretrainConfig
    from sft.config import SFTConfig
    from zhllama.config import load_config
    from zhllama.errors import UserError

    with pytest.raises(UserError) as err:
        load_config(PretrainConfig, TINY_CONFIG, ["deepspeed.sequence_parallel=2", "model.attn_implementation=eager",
                                                  "model.neftune_alpha=5"])
    assert "eager" in str(err.value) and "neftune_alpha" in str(err.value)
    with pytest.raises(UserError, match="sequence_parallel: must be >= 1"):
        load_config(PretrainConfig, TINY_CONFIG, ["deepspeed.sequence_parallel=0"])
    with pytest.raises(UserError, match="objective=dpo scores whole rows"):
        load_config(SFTConfig, REPO / "sft" / "configs" / "tiny_cpu.yaml",
                    ["deepspeed.sequence_parallel=2", "objective=dpo"])


def test_the_64k_preset_accumulates_for_its_data_ranks_and_deepspeed_counts_every_rank():
    """8 GPUs sharing each block are 1 data rank: the global batch of 16 blocks takes 16 micro steps (8 on 2
    nodes); DeepSpeed, which averages over all ranks, is told 16 x 8 sequences per step."""
    from engine.dist import build_ds_config
    from pretrain.train_cli import PretrainConfig
    from zhllama.config import load_config

    preset = REPO / "pretrain" / "configs" / "llama3_8b_64k_sp_8xH100.yaml"
    for gpus, accumulation in ((8, 16), (16, 8)):
        cfg = load_config(PretrainConfig, preset)
        ds = build_ds_config(cfg, world_size=gpus, hidden_size=4096)
        assert cfg.batch.gradient_accumulation_steps == accumulation
        assert ds["train_batch_size"] == 16 * 8 and ds["gradient_accumulation_steps"] == accumulation


def test_models_whose_heads_cannot_be_shared_are_refused(tmp_path):
    from engine.sequence_parallel import check_model
    from zhllama.errors import UserError

    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 6, "num_key_value_heads": 6}))
    with pytest.raises(UserError, match="6 attention heads"):
        check_model(str(tmp_path), 4)
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 12, "num_key_value_heads": 3}))
    with pytest.raises(UserError, match="3 key/value heads"):
        check_model(str(tmp_path), 4)
    check_model(str(tmp_path), 3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.distributed
def test_two_ranks_sharing_each_sequence_train_as_one_rank_on_whole_rows(tiny_model, tmp_path):
    """`pretrain train` under ZeRO-3: 2 ranks with deepspeed.sequence_parallel=2 read the data of one rank, so
    the run equals 1 rank's on whole rows: the same validation losses, gradient norms and final weights up to
    float rounding; with gradient checkpointing and tiled MLPs (model.mlp_chunk_tokens) on the shared rows."""
    import torch
    from safetensors.torch import load_file

    runs = {}
    # the shared rows also recompute each layer and tile its MLP (engine/tiled_mlp.py): the same numbers again
    split = ["deepspeed.sequence_parallel=2", "model.gradient_checkpointing=true", "model.mlp_chunk_tokens=16"]
    for name, ranks, extra in (("split", 2, split), ("whole", 1, [])):
        out = tmp_path / name
        log = _launch({"mode": "train", "overrides": [f"model.path={tiny_model}", f"output_dir={out}", *SHORT,
                                                      *extra]}, ranks)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[name] = ([r["eval/loss"] for r in records if "eval/loss" in r],
                      [(r["train/loss"], r["train/grad_norm"]) for r in records if "train/loss" in r],
                      load_file(str(out / "engine_state.safetensors")), log)
    assert "2 ranks share each sequence, 1 read different data" in runs["split"][3]
    assert "MLPs of 2 layers in tiles of 16 positions" in runs["split"][3]
    (split_eval, split_train, split_state, _), (whole_eval, whole_train, whole_state, _) = runs["split"], runs["whole"]
    assert len(split_eval) == len(whole_eval) == 3 and split_eval[-1] < split_eval[0] - 0.3, split_eval
    torch.testing.assert_close(torch.tensor(split_eval), torch.tensor(whole_eval), rtol=0, atol=2e-5)
    # the gradient's norm too (Adam would hide a gradient off by the group's size in the weights)
    torch.testing.assert_close(torch.tensor(split_train), torch.tensor(whole_train), rtol=0, atol=2e-5)
    for name, tensor in whole_state.items():
        torch.testing.assert_close(split_state[name], tensor, rtol=0, atol=2e-5, msg=name)


if __name__ == "__main__":
    SPEC = json.loads(sys.argv[1])
    (_attention_driver if SPEC["mode"] == "attention" else _train_driver)(SPEC)
