"""model.mlp_chunk_tokens (engine/tiled_mlp.py): the decoder MLPs over tiles of positions give the same loss and
gradients, and keep a fraction of the activations for backward. (Under ZeRO-3 with sequence parallelism and
gradient checkpointing: tests/test_engine_sequence_parallel.py's training run.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa")
    return LlamaForCausalLM(config).train()


def _batch(rows: int = 2, length: int = 40):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 61, (rows, length), generator=gen)
    return {"input_ids": ids, "labels": ids.clone()}


def _loss_and_grads(model, batch):
    from engine.evaluate import forward_loss

    model.zero_grad()
    loss_sum, count = forward_loss(model, batch, "cpu")
    (loss_sum / count).backward()
    return loss_sum.item() / count.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward during the forward (the activations' memory)."""
    from engine.evaluate import forward_loss

    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_loss(model, batch, "cpu")
    return total


@pytest.mark.parametrize("lora", [False, True])
def test_tiles_give_the_same_loss_and_gradients(lora):
    from engine.tiled_mlp import install_tiled_mlp

    import copy

    plain = _model()
    if lora:
        from peft import LoraConfig, get_peft_model

        plain = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "q_proj"]))
        for name, p in plain.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapters an effect to differentiate
                torch.nn.init.normal_(p, std=0.1)
    tiled = copy.deepcopy(plain)
    assert install_tiled_mlp(tiled, 24) == 2  # 2 rows: 12 positions a tile, 4 tiles of a 40-position row
    batch = _batch()
    loss, grads = _loss_and_grads(plain, batch)
    tiled_loss, tiled_grads = _loss_and_grads(tiled, batch)
    assert abs(loss - tiled_loss) < 1e-6
    assert grads.keys() == tiled_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(tiled_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation and generation: tiles without checkpoints
        torch.testing.assert_close(tiled(**{"input_ids": batch["input_ids"]}).logits,
                                   plain(**{"input_ids": batch["input_ids"]}).logits, rtol=0, atol=1e-5)


def test_tiles_keep_a_fraction_of_the_mlp_activations():
    """The MLP's intermediates (3 x 96 wide here, 3.5 x the hidden size in Llama-3.1) are kept for one tile at most:
    only the tiles' inputs stay for backward."""
    from engine.tiled_mlp import install_tiled_mlp

    batch = _batch(rows=1, length=96)
    plain_bytes = _saved_bytes(_model(), batch)
    tiled = _model()
    install_tiled_mlp(tiled, 16)
    tiled_bytes = _saved_bytes(tiled, batch)
    mlp_intermediates = 2 * (4 * 96 * 96 * 4)  # 2 layers x (gate, up, act, product) x positions x width x fp32
    assert plain_bytes - tiled_bytes > 0.7 * mlp_intermediates, (plain_bytes, tiled_bytes)


def test_a_negative_tile_is_refused():
    from pretrain.train_cli import PretrainConfig
    from zhllama.config import load_config
    from zhllama.errors import UserError

    tiny = Path(__file__).resolve().parents[1] / "pretrain" / "configs" / "tiny_cpu.yaml"
    with pytest.raises(UserError, match="mlp_chunk_tokens: must be >= 0"):
        load_config(PretrainConfig, tiny, ["model.mlp_chunk_tokens=-1"])
