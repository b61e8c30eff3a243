"""NEFTune (model.neftune_alpha): uniform noise of bound alpha / sqrt(L * d) on the input embeddings while
training, none in evaluation; in a run it changes the training forward and not the evaluation."""
from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_train import _train, assets  # noqa: F401  (assets is a fixture)

from engine.noise import install_embedding_noise


def _tiny_llama(hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=128,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4))


def test_noise_only_while_training_and_within_its_bound():
    model, ids = _tiny_llama(), torch.randint(0, 128, (4, 32))
    embeddings = model.get_input_embeddings()
    clean = embeddings(ids).detach()
    assert install_embedding_noise(model, 0.0) is None
    handle = install_embedding_noise(model, 5.0)
    model.train()
    noise = (embeddings(ids) - clean).detach()
    bound = 5.0 / math.sqrt(32 * 64)
    assert noise.abs().max() <= bound * (1 + 1e-5) and noise.abs().max() > 0.99 * bound
    assert abs(noise.abs().mean().item() - bound / 2) < 0.05 * bound  # uniform on [-bound, bound]
    assert abs(noise.mean().item()) < 0.05 * bound
    model.eval()
    assert torch.equal(embeddings(ids), clean)
    handle.remove()
    model.train()
    assert torch.equal(embeddings(ids), clean)


def test_noise_reaches_a_lora_model_with_trained_embeddings():
    """mode=lora wraps embed_tokens for modules_to_save: the hook must sit on what the model really calls."""
    from engine.config import TrainConfig
    from engine.model import apply_mode
    from zhllama.config import load_config

    cfg = load_config(TrainConfig, None, ["model.path=m", "mode=lora", "lora.r=4", "lora.dropout=0"])
    module, ids = apply_mode(cfg, _tiny_llama()), torch.randint(0, 128, (2, 16))
    module.train()  # no dropout: training and evaluation forwards agree until the noise is on
    clean = module(input_ids=ids).logits.detach()
    install_embedding_noise(module, 5.0)
    assert not torch.allclose(module(input_ids=ids).logits, clean)
    module.eval()
    assert torch.equal(module(input_ids=ids).logits, clean)


def test_a_run_with_noise_trains_differently_and_evaluates_the_same(assets):
    runs = {}
    for alpha in (0, 5):
        out = assets["root"] / f"neftune_{alpha}"
        proc = _train(f"model.path={assets['model']}", f"data.dir={assets['shards']}", f"output_dir={out}",
                      "schedule.max_steps=2", "eval.at_start=true", "eval.every_steps=0", "checkpoint.every_steps=0",
                      "logging.every_steps=1", "logging.wandb=disabled", "logging.tensorboard=false",
                      f"model.neftune_alpha={alpha}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("NEFTune noise, alpha 5" in proc.stdout) == (alpha == 5)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[alpha] = ([r["eval/loss"] for r in records if r["step"] == 0 and "eval/loss" in r],
                       [r["train/loss"] for r in records if "train/loss" in r])
    assert runs[0][0] == runs[5][0] and len(runs[0][0]) == 1  # the evaluation before training: no noise
    assert runs[0][1][0] != runs[5][1][0]  # the first training step's forward: noise


def test_alpha_out_of_range_is_refused():
    from engine.config import TrainConfig
    from zhllama.config import load_config
    from zhllama.errors import UserError

    with pytest.raises(UserError) as info:
        load_config(TrainConfig, None, ["model.path=m", "model.neftune_alpha=-1"])
    assert any("neftune_alpha" in problem for problem in info.value.problems)
