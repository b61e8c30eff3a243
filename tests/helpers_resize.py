"""Shared pieces of the resize tests (tests/test_resize.py, tests/test_resize_spelling.py): a tiny
SentencePiece BPE base trained in memory, a merged tokenizer made by appending known pieces to
it (so each new piece's base spelling is known), a random 2-layer LlamaForCausalLM saved with
safetensors, and the ``toks`` fixture (import it into a test module to use it).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import LlamaConfig, LlamaForCausalLM

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
# Appended pieces: (surface, type). Chinese characters are not in the English base, so the base
# spells them with byte-fallback pieces.
NEW_PIECES = [("中", 1), ("国", 1), ("中国", 1), ("\u2581中国", 1), ("<pad>", 4), ("<reserved_0>", 3),
              ("\u2581thequick", 1)]
ENGLISH = ["the quick brown fox jumps over the lazy dog", "hello world and hello there",
           "a model reads text one piece at a time", "small tests keep the build green"] * 20


def _train_base() -> bytes:
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(ENGLISH), model_writer=writer, vocab_size=300, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        minloglevel=2, num_threads=1,
    )
    return writer.getvalue()


def _write_tokenizer_folder(proto: pb.ModelProto, folder: Path, report: dict | None) -> None:
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    from vocab.hf_export import write_hf_folder

    write_hf_folder(proto, folder)
    if report is not None:
        (folder / "merge_report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict:
    """Base and merged tokenizer folders; merged = base + NEW_PIECES appended."""
    root = tmp_path_factory.mktemp("tok")
    base = pb.ModelProto()
    base.ParseFromString(_train_base())
    merged = pb.ModelProto()
    merged.CopyFrom(base)
    low = min(p.score for p in base.pieces)
    for k, (text, kind) in enumerate(NEW_PIECES):
        merged.pieces.add(piece=text, score=low - 1 - k, type=kind)
    n = len(base.pieces)
    _write_tokenizer_folder(base, root / "base", None)
    _write_tokenizer_folder(merged, root / "merged", {"base_vocab_size": n, "vocab_size": len(merged.pieces)})
    sp = spm.SentencePieceProcessor(model_proto=base.SerializeToString())
    return {"base": root / "base", "merged": root / "merged", "n": n, "size": len(merged.pieces), "sp": sp}


def _make_model(folder: Path, vocab: int, tied: bool, dtype=torch.float32, tokenizer: Path | None = None) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                         max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    if tokenizer is not None:
        (folder / "tokenizer.model").write_bytes((tokenizer / "tokenizer.model").read_bytes())
    return folder


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def _byte_ids(sp, text: str) -> list[int]:
    return [sp.piece_to_id(f"<0x{b:02X}>") for b in text.encode("utf-8")]


def _assert_nothing_written(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]


def logprob_rest(model, context: list[int], ids: list[int]) -> float:
    """log p(a2 .. ak | context, a1) by plain teacher forcing: what --init spelling must reproduce."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([context + ids])).logits[0].float(), dim=-1)
    return sum(float(logp[len(context) + j - 1, ids[j]]) for j in range(1, len(ids)))
