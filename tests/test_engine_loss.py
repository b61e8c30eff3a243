"""The fused, chunked LM loss equals the plain logits path (loss and gradients), and the kernels switch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.evaluate import forward_loss
from engine.kernels import attention_decision, liger_decision
from engine.loss import fused_head_of, install_fused_head, linear_cross_entropy
from zhllama.errors import UserError


def _data(n=37, h=16, v=53, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 0.3).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::4] = -100  # unlabelled positions (prompts, document starts, padding)
    return hidden, weight, labels


def _plain(hidden, weight, labels):
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_fused_loss_and_gradients_equal_the_plain_path(chunk):
    hidden, weight, labels = _data()
    want = _plain(hidden, weight, labels)
    want.backward(torch.tensor(0.7))
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = linear_cross_entropy(hidden, weight, labels, chunk)
    got.backward(torch.tensor(0.7))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hidden.grad, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, want_w, rtol=1e-5, atol=1e-6)
    assert (hidden.grad[::4] == 0).all()  # unlabelled positions get no gradient


def test_fused_loss_in_bfloat16_stays_close_and_keeps_dtypes():
    hidden, weight, labels = _data(dtype=torch.bfloat16)
    got = linear_cross_entropy(hidden, weight, labels, 7)
    got.backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    want = _plain(h32, w32, labels)
    want.backward()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0.5)
    torch.testing.assert_close(weight.grad.float(), w32.grad, rtol=5e-2, atol=5e-2)


def test_no_labelled_position_gives_zero_loss_and_zero_gradients():
    hidden, weight, labels = _data()
    got = linear_cross_entropy(hidden, weight, torch.full_like(labels, -100))
    got.backward()
    assert got.item() == 0 and (hidden.grad == 0).all() and (weight.grad == 0).all()


def test_evaluation_without_grad_gives_the_same_loss():
    hidden, weight, labels = _data()
    with torch.no_grad():
        got = linear_cross_entropy(hidden, weight, labels, 5)
    torch.testing.assert_close(got, _plain(hidden, weight, labels).detach(), rtol=1e-6, atol=1e-5)


class _Engine:
    """What forward_loss needs of a DeepSpeed engine: call it, and ``.module``."""

    def __init__(self, module):
        self.module = module

    def __call__(self, **kwargs):
        return self.module(**kwargs)


def _tiny_llama(seed: int = 0, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


def _batch():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 61, (2, 12), generator=gen)
    labels = ids.clone()
    labels[0, :4] = -100  # an SFT prompt
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(12).repeat(2, 1)}


def _loss_and_grads(model):
    loss_sum, count = forward_loss(_Engine(model), _batch(), torch.device("cpu"))
    (loss_sum / count).backward()
    return loss_sum.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [False, True])
def test_installed_head_trains_the_model_exactly_like_plain_logits(tied):
    plain, fused = _tiny_llama(tied=tied), _tiny_llama(tied=tied)
    install_fused_head(fused, chunk_tokens=5)
    assert fused_head_of(fused) is not None and fused_head_of(plain) is None
    want_loss, want_count, want_grads = _loss_and_grads(plain)
    got_loss, got_count, got_grads = _loss_and_grads(fused)
    assert got_count == want_count == 2 * 11 - 3  # targets are labels[:, 1:]; three of them are prompt
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # without labels set, the head gives logits as before (generation, HF eval)
        ids = _batch()["input_ids"]
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_head_of_a_lora_model_is_the_trained_copy():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"],
                                                     task_type="CAUSAL_LM"))
    head = install_fused_head(model, chunk_tokens=4)
    assert head is model.base_model.model.lm_head.modules_to_save["default"] and head.weight.requires_grad
    loss_sum, count = forward_loss(_Engine(model), _batch(), torch.device("cpu"))
    loss_sum.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_liger_switch():
    assert liger_decision("auto", cuda=True, installed=True)[0]
    assert liger_decision("auto", cuda=False, installed=True) == (False, "no CUDA device")
    assert liger_decision("off", cuda=True, installed=True)[0] is False
    with pytest.raises(UserError, match="no CUDA device and liger-kernel is not installed"):
        liger_decision("on", cuda=False, installed=False)


@pytest.mark.parametrize("call", ["linear_cross_entropy(h, w, y, chunk={chunk}).backward()",
                                  "linear_token_logps(h, w, y, chunk={chunk}).backward(torch.ones({tokens}))"])
def test_at_most_about_one_chunk_of_logits_is_ever_alive(call):
    """The point of the fused loss (and DPO's per-token log-probabilities): memory ~ one chunk x vocab,
    never B x S x V (measured in a fresh process by peak RSS; chunks this large are mmap'ed, so freed
    ones leave it)."""
    import subprocess
    import sys
    from pathlib import Path

    tokens, vocab, chunk = 8192, 32000, 1024
    code = (
        "import resource, torch\n"
        "from engine.loss import linear_cross_entropy, linear_token_logps\n"
        f"h = torch.randn({tokens}, 64, requires_grad=True); w = torch.randn({vocab}, 64, requires_grad=True)\n"
        f"y = torch.randint(0, {vocab}, ({tokens},))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        + call.format(chunk=chunk, tokens=tokens) + "\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                          env={"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    added = int(proc.stdout.strip().splitlines()[-1])
    one_chunk = chunk * vocab * 4
    # measured: 1.2 (summed loss) and 1.6 (per-token) chunks; two chunks alive at once would be ~2.5
    assert added < 2.0 * one_chunk, f"{added / 2**20:.0f} MiB added; one chunk of logits is {one_chunk / 2**20:.0f} MiB"


@pytest.mark.parametrize("cuda, half, hopper, fa3, fa2, expected", [
    (False, True, False, True, True, "sdpa"),  # CPU: whatever is installed
    (True, True, True, True, True, "flash_attention_3"),
    (True, True, False, True, True, "flash_attention_2"),  # FA3 needs Hopper
    (True, True, True, False, True, "flash_attention_2"),
    (True, False, True, True, True, "flex_attention"),  # fp32: flash-attn has no kernels
    (True, True, True, False, False, "flex_attention"),
])
def test_auto_attention_picks_the_fastest_document_masked_kernel_here(cuda, half, hopper, fa3, fa2, expected):
    chosen, why = attention_decision(cuda, half, hopper, fa3, fa2)
    assert chosen == expected and why


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_per_token_log_probs_and_their_gradients_equal_the_plain_path(chunk):
    """DPO's per-answer log-probabilities from the chunked head: values and gradients (each position with
    its own upstream gradient, as DPO's per-pair weights give) equal log_softmax of the full logits."""
    from engine.loss import linear_token_logps

    hidden, weight, labels = _data()
    keep = labels != -100
    upstream = torch.linspace(-1.0, 2.0, int(keep.sum()))
    want = (hidden @ weight.t()).float().log_softmax(-1)[keep].gather(1, labels[keep][:, None]).squeeze(1)
    want.backward(upstream)
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = linear_token_logps(hidden, weight, labels, chunk)
    got.backward(upstream)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hidden.grad, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, want_w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(linear_token_logps(hidden, weight, labels, chunk), want, rtol=1e-6, atol=1e-5)
