"""Packed blocks: attention must not cross a document boundary (single process, CPU, fast).

transformers builds a block-causal mask from packed ``position_ids`` when no attention mask and
no cache are given; the engine relies on that (evaluate.forward_loss passes use_cache=False), with
every attention kernel the engine config offers on CPU.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _logits(model, ids, positions, impl):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions, use_cache=False).logits


# flex_attention (the fastest document-masked kernel on GPU) compiles its kernel on first use: ~20 s here.
@pytest.mark.parametrize("impl", ["sdpa", "eager", "flex_attention"])
def test_document_two_does_not_see_document_one(tiny_llama, impl):
    gen = torch.Generator().manual_seed(1)
    doc1, doc2 = torch.randint(3, 97, (9,), generator=gen), torch.randint(3, 97, (7,), generator=gen)
    ids = torch.cat([doc1, doc2]).unsqueeze(0)
    packed = torch.cat([torch.arange(9), torch.arange(7)]).unsqueeze(0)  # positions restart at doc 2
    changed = ids.clone()
    changed[0, :9] = torch.randint(3, 97, (9,), generator=gen)

    a, b = _logits(tiny_llama, ids, packed, impl), _logits(tiny_llama, changed, packed, impl)
    assert not torch.allclose(a[0, :9], b[0, :9]), "document 1 changed, its logits must change"
    torch.testing.assert_close(a[0, 9:], b[0, 9:], rtol=0, atol=1e-6)  # document 2: untouched

    # Document 2 alone, as its own sequence, gives the same logits: nothing leaked in.
    alone = _logits(tiny_llama, ids[:, 9:], torch.arange(7).unsqueeze(0), impl)
    torch.testing.assert_close(a[0, 9:], alone[0], rtol=0, atol=1e-5)

    # Control: the same check fails when positions do not restart (plain causal attention).
    flat = torch.arange(16).unsqueeze(0)
    c, d = _logits(tiny_llama, ids, flat, impl), _logits(tiny_llama, changed, flat, impl)
    assert not torch.allclose(c[0, 9:], d[0, 9:]), "without the reset, attention crosses the boundary"


def test_engine_loss_uses_packed_mask(tiny_llama):
    """The engine's own forward (forward_loss) sees the block-causal mask too."""
    from engine.evaluate import forward_loss

    tiny_llama.set_attn_implementation("sdpa")
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 97, (1, 16), generator=gen)
    positions = torch.cat([torch.arange(6), torch.arange(10)]).unsqueeze(0)
    labels = ids.clone()
    labels[0, :7] = -100  # only document 2's tokens after its first are scored
    changed = ids.clone()
    changed[0, :6] = torch.randint(3, 97, (6,), generator=gen)
    with torch.no_grad():
        la, na = forward_loss(tiny_llama, {"input_ids": ids, "position_ids": positions, "labels": labels}, "cpu")
        lb, nb = forward_loss(tiny_llama, {"input_ids": changed, "position_ids": positions, "labels": labels}, "cpu")
    assert na.item() == nb.item() == 9
    assert abs(la.item() - lb.item()) < 1e-5


@pytest.mark.parametrize("impl", ["sdpa", "eager", "flex_attention"])
def test_right_padded_batches_equal_each_sequence_alone(tiny_llama, impl):
    """Unpacked SFT batches (sft/collate.py: right padding + attention_mask): with every kernel that
    model.attn_implementation=auto may pick on CPU/GPU, a padded row gives the logits it has alone."""
    gen = torch.Generator().manual_seed(2)
    long, short = torch.randint(3, 97, (12,), generator=gen), torch.randint(3, 97, (7,), generator=gen)
    ids = torch.zeros((2, 12), dtype=torch.long)
    ids[0], ids[1, :7] = long, short
    mask = torch.zeros((2, 12), dtype=torch.long)
    mask[0], mask[1, :7] = 1, 1
    tiny_llama.set_attn_implementation(impl)
    with torch.no_grad():
        batch = tiny_llama(input_ids=ids, attention_mask=mask, use_cache=False).logits
        alone = [tiny_llama(input_ids=x.unsqueeze(0), use_cache=False).logits[0] for x in (long, short)]
    torch.testing.assert_close(batch[0], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[1, :7], alone[1], rtol=0, atol=1e-5)
