"""vocab/bpc.py: every token scored once, bits = nats / ln 2, divided by characters."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from vocab.bpc import bits_per_character, windows


def test_windows_score_every_token_after_the_first_exactly_once():
    ids = list(range(11))
    for block in (1, 3, 4, 10, 50):
        cut = windows(ids, block)
        targets = [t for w in cut for t in w[1:]]
        assert targets == ids[1:], block
        assert all(len(w) <= block + 1 for w in cut)
    assert windows([5], 4) == []


class _Uniform(torch.nn.Module):
    """Equal logits everywhere, except that token 7 is certain: its cost is 0 bits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros((*input_ids.shape, self.vocab))
        logits[input_ids == 6] = -1e9  # after token 6 only token 7 is possible
        logits[..., 7] = torch.where(input_ids == 6, 0.0, logits[..., 7])
        return SimpleNamespace(logits=logits)


def test_bits_per_character_of_a_uniform_model():
    vocab = 16
    texts = ["abc", "hello world"]  # one token per character
    encode = lambda text: [ord(c) % 5 for c in text]  # ids 0..4: never 6, so all uniform  # noqa: E731
    result = bits_per_character(_Uniform(vocab), texts, encode, bos_id=9, block_size=4, batch_size=3)
    assert result.characters == 14 and result.tokens == 14
    assert math.isclose(result.bpc, math.log2(vocab), rel_tol=1e-6)
    certain = bits_per_character(_Uniform(vocab), ["xy"], lambda text: [6, 7], bos_id=9, block_size=8)
    assert math.isclose(certain.nll_bits, math.log2(vocab), rel_tol=1e-6)  # only the first token costs
    assert certain.bpc == certain.nll_bits / 2
