"""``vocab stats`` for byte-level BPE tokenizers (an extended folder, or any base file itself).

Per file (one text per line, empty lines skipped, no BOS): ``tokens_per_char``;
``tokens_per_han_char`` (tokens covering at least one Han character / Han characters);
``vocab_used_share``; with ``--base``: the base's tokens per character and the guarantees —
``non_han_lines_changed`` (lines without Han characters whose ids differ), ``lines_longer``
(lines with more tokens than with the base), ``roundtrip_failures`` (decode(encode(x)) != x).
Per tokenizer, with a base: ``added`` (ids from the base's next id on) and ``unreachable_added``
(added tokens whose own text does not encode to them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer

from .bbpe_base import load_bbpe_base
from .bbpe_hf import build_tokenizer
from .bbpe_train import is_han_cp
from .bbpe_verify import ids_of


def load_any(path: str | Path) -> tuple[Tokenizer, Any]:
    """(tokenizers object, ByteBPEBase) of a folder / tokenizer.json / rank file / tekken.json."""
    base = load_bbpe_base(path)
    return (build_tokenizer(base) if base.fmt != "hf" else Tokenizer.from_str(json.dumps(base.hf_json))), base


def _han(text: str) -> int:
    return sum(is_han_cp(ord(c)) for c in text)


def file_stats(tok: Tokenizer, lines: Sequence[str], base_tok: Tokenizer | None) -> dict[str, Any]:
    lines = [x for x in lines if x.strip()]
    tok.encode_special_tokens = True
    try:
        encs = tok.encode_batch(lines, add_special_tokens=False)
    finally:
        tok.encode_special_tokens = False
    chars, han = sum(map(len, lines)), sum(map(_han, lines))
    tokens = sum(len(e.ids) for e in encs)
    han_tokens = sum(sum(_han(x[s:e]) > 0 for s, e in enc.offsets) for x, enc in zip(lines, encs))
    used = {i for e in encs for i in e.ids}
    out = {"lines": len(lines), "characters": chars, "han_characters": han, "tokens": tokens,
           "tokens_per_char": round(tokens / chars, 6) if chars else None,
           "tokens_per_han_char": round(han_tokens / han, 6) if han else None,
           "vocab_used_share": round(len(used) / tok.get_vocab_size(), 6)}
    if base_tok is not None:
        base_ids = ids_of(base_tok, lines)
        new_ids = [e.ids for e in encs]
        plain = [k for k, x in enumerate(lines) if not _han(x)]
        decoded = tok.decode_batch(new_ids, skip_special_tokens=False)
        out.update({"base_tokens_per_char": round(sum(map(len, base_ids)) / chars, 6) if chars else None,
                    "non_han_lines": len(plain),
                    "non_han_lines_changed": sum(base_ids[k] != new_ids[k] for k in plain),
                    "lines_longer": sum(len(b) > len(a) for a, b in zip(base_ids, new_ids)),
                    "roundtrip_failures": sum(x != y for x, y in zip(lines, decoded))})
    return out


def bbpe_stats(tokenizer: str | Path, base: str | Path | None, files: dict[str, list[str]]) -> dict[str, Any]:
    tok, _ = load_any(tokenizer)
    report: dict[str, Any] = {"tokenizer": {"path": str(tokenizer), "vocab_size": tok.get_vocab_size()}}
    base_tok = None
    if base is not None:
        base_tok, base_obj = load_any(base)
        first = base_obj.next_id
        added = list(range(first, tok.get_vocab_size()))
        texts = [tok.decode([i]) for i in added]
        got = tok.encode_batch(texts, add_special_tokens=False)
        bad = [t for i, t, e in zip(added, texts, got) if e.ids != [i]]
        report["tokenizer"].update({"base": str(base), "base_next_id": first, "added": len(added),
                                    "unreachable_added": len(bad), "unreachable_examples": bad[:10]})
    report["files"] = {path: file_stats(tok, lines, base_tok) for path, lines in files.items()}
    return report
