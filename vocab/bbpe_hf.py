"""Build the tokenizers-library object of a byte-level BPE base, with new tokens appended.

One builder serves the base and the extended tokenizer, so both are compared like with like.

Merges. A rank file has no merges: tiktoken joins any two adjacent tokens whose concatenation is
a token, lowest rank first. The equivalent merges list (what Llama-3's and Mistral Nemo's
published tokenizer.json hold) has, for every token in rank order, each split ``left + right``
whose halves are tokens, ordered by the halves' ranks. A new token gets its merges the same way,
after all of the base's, so it can never pre-empt a base merge. ``ignore_merges`` (a pre-token
that is itself a token is taken whole) is tiktoken's behaviour too.
"""
from __future__ import annotations

import json
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from .bbpe_base import ByteBPEBase, to_bytelevel


def split_merges(ranked: list[bytes], vocab: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of each token of ``ranked`` (in that order) into two tokens of ``vocab``."""
    merges: list[tuple[bytes, bytes]] = []
    for token in ranked:
        local = [(vocab[token[:cut]], vocab[token[cut:]], token[:cut], token[cut:])
                 for cut in range(1, len(token)) if token[:cut] in vocab and token[cut:] in vocab]
        local.sort()
        merges += [(left, right) for _, _, left, right in local]
    return merges


def base_merges(base: ByteBPEBase) -> list[tuple[bytes, bytes]]:
    if base.merges is not None:
        return list(base.merges)
    vocab = {t: i for i, t in base.tokens.items()}
    return split_merges([base.tokens[i] for i in sorted(base.tokens)], vocab)


def extended_vocab(base: ByteBPEBase, new: list[bytes]) -> dict[bytes, int]:
    vocab = {t: i for i, t in base.tokens.items()}
    for k, token in enumerate(new):
        vocab[token] = base.next_id + k
    return vocab


def _post_processor(base: ByteBPEBase, bos_id: int | None):
    if base.bos is None or bos_id is None:
        return processors.ByteLevel(trim_offsets=False)
    return processors.TemplateProcessing(single=f"{base.bos}:0 $A:0", pair=f"{base.bos}:0 $A:0 {base.bos}:1 $B:1",
                                         special_tokens=[(base.bos, bos_id)])


def _with_specials(vocab: dict[str, int], base: ByteBPEBase) -> dict[str, int]:
    """Special tokens in the model's vocab too. Loading a tokenizer.json, tokenizers numbers an added
    token that the model lacks from the model's *size* on, which is wrong as soon as ids have a
    hole (new ids after Llama-3's 256 specials); one the model has keeps the model's id. The
    model never produces them: no merge makes them, and no pre-token equals one."""
    for i, content in base.specials.items():
        vocab.setdefault(content, i)
    return vocab


def _from_ranks(base: ByteBPEBase, new: list[bytes], merges: list[tuple[bytes, bytes]]) -> Tokenizer:
    vocab = extended_vocab(base, new)
    tok = Tokenizer(BPE(vocab=_with_specials({to_bytelevel(t): i for t, i in vocab.items()}, base),
                        merges=[(to_bytelevel(a), to_bytelevel(b)) for a, b in merges],
                        ignore_merges=True, fuse_unk=False, byte_fallback=False, dropout=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(base.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    ids = {v: k for k, v in base.specials.items()}
    tok.post_processor = _post_processor(base, ids.get(base.bos))
    # add_special_tokens would number them after the vocab's size; the JSON form keeps our ids.
    raw = json.loads(tok.to_str())
    raw["added_tokens"] = [added_token_entry(i, base.specials[i]) for i in sorted(base.specials)]
    return Tokenizer.from_str(json.dumps(raw, ensure_ascii=False))


def added_token_entry(i: int, content: str) -> dict[str, Any]:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def _from_hf(base: ByteBPEBase, new: list[bytes], new_merges: list[tuple[bytes, bytes]]) -> Tokenizer:
    raw: dict[str, Any] = json.loads(json.dumps(base.hf_json))  # deep copy; the base stays as read
    model = raw["model"]
    for k, token in enumerate(new):
        model["vocab"][to_bytelevel(token)] = base.next_id + k
    _with_specials(model["vocab"], base)
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    for a, b in new_merges:
        pair = (to_bytelevel(a), to_bytelevel(b))
        model["merges"].append(" ".join(pair) if as_strings else list(pair))
    return Tokenizer.from_str(json.dumps(raw, ensure_ascii=False))


def build_tokenizer(base: ByteBPEBase, new: list[bytes] = ()) -> Tokenizer:
    """The base (``new`` empty) or the extended tokenizer: new token k gets id ``base.next_id + k``."""
    new = list(new)
    vocab = extended_vocab(base, new)
    appended = split_merges(new, vocab)
    if base.fmt == "hf":
        return _from_hf(base, new, appended)
    return _from_ranks(base, new, base_merges(base) + appended)


def tokenizer_json(base: ByteBPEBase, new: list[bytes]) -> str:
    """The extended tokenizer.json text: for an HF base, the base file with vocab and merges appended."""
    return build_tokenizer(base, new).to_str(pretty=True)
