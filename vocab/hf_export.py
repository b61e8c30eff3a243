"""Write (and load) the Hugging Face side of a merged SentencePiece tokenizer.

transformers 5 has no sentencepiece-backed Llama tokenizer, and its ``LlamaTokenizer`` rebuilds
its own pre-tokenizer (which drops sentencepiece's "▁" prefix for text that starts with a space).
So the folder names the generic class (``PreTrainedTokenizerFast``), which runs tokenizer.json as
written under transformers 4 and 5: sentencepiece's normalisation (prefix "▁", spaces -> "▁") as
the normalizer, no pre-tokenizer, and a BPE model whose merges list we write so that BPE in
tokenizers picks merges in the same order as sentencepiece:

* sentencepiece merges the adjacent pair whose concatenation is a piece with the highest score
  (leftmost on ties); tokenizers merges the pair with the lowest rank (leftmost on ties). So every
  split ``left + right`` of a NORMAL piece whose halves are NORMAL pieces becomes a merge, ranked
  by the merged piece's score (descending), then id. With unique scores that is the same order.
* Characters that are not pieces are byte-fallback in tokenizers before merging, so they can
  never merge there; the merge makes sure every character of an added piece is a piece.

This module never imports torch or transformers at import time (the merge must not import
torch); :func:`load_hf_tokenizer` imports transformers only when called.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from .spm_proto import CONTROL, NORMAL, UNKNOWN, USER_DEFINED

# Keys of a base folder's tokenizer_config.json that describe the model's conversation format and
# special tokens; they are carried over to the merged folder.
_CARRIED_CONFIG_KEYS = ("chat_template", "model_max_length", "padding_side", "truncation_side",
                        "clean_up_tokenization_spaces", "add_bos_token", "add_eos_token",
                        "additional_special_tokens", "extra_special_tokens", "bos_token",
                        "eos_token", "unk_token", "pad_token", "use_default_system_prompt")


TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Class names the generic class loads as (transformers 5 renamed it).
GENERIC_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")

PieceTable = list[tuple[str, float, int]]  # (piece, score, type) by id: protobuf access is slow


def piece_table(proto: pb.ModelProto) -> PieceTable:
    return [(p.piece, p.score, p.type) for p in proto.pieces]


def bpe_merges(table: PieceTable) -> list[tuple[str, str]]:
    """All merges that reproduce sentencepiece BPE, ordered like its priority queue."""
    normal = {piece: (i, score) for i, (piece, score, kind) in enumerate(table) if kind == NORMAL}
    ranked = []
    for piece, (pid, score) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                # Within one piece the splits tie in sentencepiece (same score); order them by the
                # halves' ids, which is the order the transformers converter uses too.
                ranked.append((-score, pid, normal[left][0], normal[right][0], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _special_added_tokens(table: PieceTable) -> list[tuple[int, AddedToken]]:
    tokens = []
    for i, (piece, _, kind) in enumerate(table):
        if kind in (CONTROL, UNKNOWN):
            tokens.append((i, AddedToken(piece, special=True, normalized=False)))
        elif kind == USER_DEFINED:
            tokens.append((i, AddedToken(piece, special=False, normalized=False)))
    return tokens


def build_backend(proto: pb.ModelProto, add_bos: bool = True, add_eos: bool = False,
                  table: PieceTable | None = None) -> Tokenizer:
    """The tokenizers object of the folder for this model: what AutoTokenizer runs (tokenizer.json).

    ``table`` (the pieces of ``proto``) may be passed to skip reading the protobuf again."""
    table = piece_table(proto) if table is None else table
    vocab = {piece: i for i, (piece, _, _) in enumerate(table)}
    unk = table[proto.trainer_spec.unk_id][0]
    tok = Tokenizer(BPE(vocab=vocab, merges=bpe_merges(table), unk_token=unk, fuse_unk=True,
                        byte_fallback=True, dropout=None))
    # sentencepiece's own normalisation, as a normalizer: "▁" before the text (add_dummy_prefix),
    # every space -> "▁", no splitting. (A Metaspace pre-tokenizer, what transformers' Llama class
    # builds, skips the prefix when the text already starts with a space.) Added tokens split the
    # text first, so each piece of text between special tokens gets its own "▁" — as when the
    # pieces are encoded one by one, the way SFT builds its samples.
    steps_in = [normalizers.Prepend("▁")] if proto.normalizer_spec.add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence(steps_in + [normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    added = _special_added_tokens(table)
    tok.add_tokens([t for _, t in added if not t.special])
    tok.add_special_tokens([t for _, t in added if t.special])
    for i, t in added:  # added tokens must keep their SentencePiece ids
        assert tok.token_to_id(t.content) == i, (t.content, i)
    bos = table[proto.trainer_spec.bos_id][0] if proto.trainer_spec.bos_id >= 0 else None
    eos = table[proto.trainer_spec.eos_id][0] if proto.trainer_spec.eos_id >= 0 else None
    single = " ".join(([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos and eos else []))
    pair = single + " " + " ".join(([f"{bos}:1"] if add_bos and bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos and eos else []))
    specials = [(t, vocab[t]) for t in (bos, eos) if t and ((t == bos and add_bos) or (t == eos and add_eos))]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return tok


def _token_entry(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_hf_folder(proto: pb.ModelProto, out: Path, base_config: dict[str, Any] | None = None,
                    pad_token: str | None = None, chat_template_file: Path | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for ``proto``.

    ``base_config`` is the base folder's tokenizer_config.json (when --base was a folder): its
    special tokens and chat template are kept.
    """
    base_config = dict(base_config or {})
    add_bos = bool(base_config.get("add_bos_token", True))
    add_eos = bool(base_config.get("add_eos_token", False))
    table = piece_table(proto)
    backend = build_backend(proto, add_bos=add_bos, add_eos=add_eos, table=table)
    backend.save(str(out / "tokenizer.json"))

    spec = proto.trainer_spec
    names = {"bos_token": spec.bos_id, "eos_token": spec.eos_id, "unk_token": spec.unk_id}
    special_map: dict[str, Any] = {k: table[i][0] for k, i in names.items() if i >= 0}
    config: dict[str, Any] = {k: base_config[k] for k in _CARRIED_CONFIG_KEYS if k in base_config}
    for key, value in list(config.items()):  # AddedToken dicts in old configs -> plain strings
        if isinstance(value, dict) and "content" in value:
            config[key] = value["content"]
    for key, value in special_map.items():
        config.setdefault(key, value)
    if pad_token is not None:
        config["pad_token"] = pad_token
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if config.get(key) is not None:
            special_map[key] = config[key]
    config.update({
        # The generic class loads tokenizer.json as written, under transformers 4 and 5 (and so in
        # vLLM). transformers 5's LlamaTokenizer rebuilds its own normalizer/pre-tokenizer instead,
        # which gives other ids than sentencepiece for text starting with a space.
        "tokenizer_class": TOKENIZER_CLASS,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        # legacy=True: a loader that still builds transformers 4's Llama class from tokenizer.model
        # gets the same Prepend + Replace normalizer as tokenizer.json.
        "legacy": True,
        # read by llama.cpp's converter (GGUF tokenizer.ggml.add_space_prefix)
        "add_prefix_space": bool(proto.normalizer_spec.add_dummy_prefix),
        "added_tokens_decoder": {
            str(i): dict(_token_entry(t.content), special=t.special)
            for i, t in _special_added_tokens(table)
        },
    })
    config.setdefault("clean_up_tokenization_spaces", False)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
    if chat_template_file is not None and chat_template_file.is_file():
        shutil.copyfile(chat_template_file, out / chat_template_file.name)


def load_backend_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizers object of a merged folder without transformers (no torch): same ids as
    :func:`load_hf_tokenizer`, because it is built from the same vocab/merges the same way."""
    from .spm_proto import load_model_proto

    folder = Path(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return build_backend(load_model_proto(folder / "tokenizer.model"),
                         add_bos=config.get("add_bos_token", True), add_eos=config.get("add_eos_token", False))


def load_hf_tokenizer(folder: str | Path):
    """Load a merged folder as the transformers tokenizer whose ids equal sentencepiece's.

    Imports transformers (and so torch) lazily. Checks the traps of transformers 5: the class must
    be the generic one that keeps tokenizer.json's pipeline, BOS added, no EOS.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    name = type(tok).__name__
    if name not in GENERIC_CLASSES:
        raise TypeError(f"{folder}: loaded as {name}, expected {TOKENIZER_CLASS} (tokenizer_config.json wrong?)")
    # With a tokenizer.json, transformers 5 takes BOS/EOS from its post-processor (which we wrote)
    # and drops add_bos_token from the config, so the attribute reads False although BOS is added.
    # Setting it rebuilds the same post-processor and makes the attribute tell the truth.
    config = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok.add_bos_token = bool(config.get("add_bos_token", True))
    tok.add_eos_token = bool(config.get("add_eos_token", False))
    return tok
