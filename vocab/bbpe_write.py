"""Write an extended byte-level BPE tokenizer: the HF folder and the base's original format.

HF folder: tokenizer.json (vocab and merges appended; special tokens, normalizer, pre-tokenizer,
post-processor and decoder as the base's) and tokenizer_config.json. For an HF base folder its
tokenizer_config.json, special_tokens_map.json and chat_template.jinja are copied unchanged (the
special tokens keep their ids, so they stay right); vocab.json/merges.txt (the slow tokenizer's
files) are not copied, since they would lack the new tokens. For a rank file we write a config
that AutoTokenizer loads as the fast tokenizer of tokenizer.json.

Original format, when the base had one: the rank file (in ``original/``, as Meta's repositories keep
it) with one line ``base64(token) id`` per new token appended (its ids are its ranks), or the
tekken.json with vocab entries appended and ``default_vocab_size`` raised (the unused tail of its
vocab list, beyond the old ``default_vocab_size``, is dropped: it was never part of the tokenizer
and would collide).
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

from .bbpe_base import ByteBPEBase
from .bbpe_hf import tokenizer_json

CARRIED_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


def _token_entry(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def _config_for_rank_file(base: ByteBPEBase) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "added_tokens_decoder": {str(i): _token_entry(c) for i, c in sorted(base.specials.items())},
    }
    if base.bos:
        config["bos_token"] = base.bos
    if base.eos:
        config["eos_token"] = base.eos
    from .bbpe_templates import chat_template  # known profiles only

    version = (base.tekken_json or {}).get("config", {}).get("version") if base.fmt == "tekken" else None
    template = chat_template(base.profile, version)
    if template:
        config["chat_template"] = template
    return config


def write_hf_folder(base: ByteBPEBase, new: list[bytes], out: Path) -> list[str]:
    """Write the HF tokenizer files into ``out``; returns the names written."""
    (out / "tokenizer.json").write_text(tokenizer_json(base, new), encoding="utf-8")
    written = ["tokenizer.json"]
    carried = [name for name in CARRIED_FILES if base.folder is not None and (base.folder / name).is_file()]
    for name in carried:
        shutil.copyfile(base.folder / name, out / name)
    if "tokenizer_config.json" not in carried:
        config = _config_for_rank_file(base)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
        written.append("tokenizer_config.json")
    return written + carried


ORIGINAL_DIR = "original"


def original_name(base: ByteBPEBase) -> str | None:
    """Where the extended original-format file goes, relative to the folder (None: an HF base).

    A rank file goes under ``original/``, as in Meta's own Hugging Face repositories: at the top level
    Llama-3's ``tokenizer.model`` is taken for a SentencePiece model by llama.cpp's converter and by
    every tool that looks for one there. tekken.json stays at the top, where Mistral's repositories
    and vLLM's mistral tokenizer mode keep it."""
    if base.fmt == "tiktoken":
        return f"{ORIGINAL_DIR}/{base.path.name}"
    return base.path.name if base.fmt == "tekken" else None


def write_original(base: ByteBPEBase, new: list[bytes], out: Path) -> str | None:
    """The base's own format extended with ``new``; returns the file name (None for an HF base)."""
    name = original_name(base)
    if base.fmt == "tiktoken":
        data = base.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data += b"\n"
        lines = [base64.b64encode(t) + b" " + str(base.next_id + k).encode() + b"\n" for k, t in enumerate(new)]
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(data + b"".join(lines))
    elif base.fmt == "tekken":
        raw = json.loads(json.dumps(base.tekken_json))
        first_rank = base.next_id - base.id_offset
        raw["vocab"] += [{"rank": first_rank + k, "token_bytes": base64.b64encode(t).decode("ascii"),
                          "token_str": t.decode("utf-8")} for k, t in enumerate(new)]
        raw["config"]["default_vocab_size"] = base.next_id + len(new)
        raw["config"]["num_vocab_tokens"] = len(raw["vocab"])
        (out / name).write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    return name


def load_rank_encoder(path: Path, fmt: str, pattern: str):
    """A tiktoken Encoding over a written original file, and the id offset (tekken), or None
    when tiktoken is not installed. Special tokens are left out: it is compared on plain text."""
    try:
        import tiktoken
    except ImportError:
        return None, 0
    from .bbpe_base import read_rank_lines

    if fmt == "tiktoken":
        ranks, offset = read_rank_lines(path, path.read_bytes()), 0
    else:
        raw = json.loads(path.read_text(encoding="utf-8"))
        offset = int(raw["config"]["default_num_special_tokens"])
        inner = int(raw["config"]["default_vocab_size"]) - offset
        ranks = {int(e["rank"]): base64.b64decode(e["token_bytes"]) for e in raw["vocab"][:inner]}
    enc = tiktoken.Encoding(f"zhllama-{path.name}", pat_str=pattern,
                            mergeable_ranks={t: r for r, t in ranks.items()}, special_tokens={})
    return enc, offset
