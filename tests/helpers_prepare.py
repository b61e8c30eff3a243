"""Helpers shared by the pretrain prepare tests (a tiny fast tokenizer, corpora, manifests), plus a check of them.

Imported by the other test_prepare*.py modules (pytest puts tests/ on sys.path)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

ZH = ["北京是中华人民共和国的首都，也是全国的政治和文化中心。", "李白，字太白，号青莲居士，唐朝浪漫主义诗人。",
      "长江是亚洲第一长河，全长约六千三百公里。", "今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个分支。"]
EN = ["The quick brown fox jumps over the lazy dog.", "Tokenize once, train many times.",
      "Documents are packed into blocks of a fixed size.", "Every token but the first is a target once."]


def corpus_lines(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct documents of varied length (some much longer than a small block)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        parts = [str(rng.choice(ZH + EN)) for _ in range(int(rng.integers(1, 6)))]
        lines.append(f"{i} " + "".join(parts))
    return lines


def make_tokenizer(folder: Path, *, bos: bool = True, eos: bool = True) -> Path:
    """A tiny byte-level BPE (fast) tokenizer folder trained in memory on ZH + EN."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(ZH * 3 + EN * 3, trainer)
    specials = {"unk_token": "<unk>"}
    if bos:
        specials["bos_token"] = "<s>"
    if eos:
        specials["eos_token"] = "</s>"
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(str(folder))
    return folder


def write_manifest(path: Path, sources: list[dict], *, holdout: float = 0.0, **top) -> Path:
    """Write a manifest; each source dict has name, file (Path) and optional weight/clean/format."""
    entries = []
    for s in sources:
        file = Path(s["file"])
        entry = {"name": s["name"], "path": str(file.resolve()), "format": s.get("format", "txt"),
                 "language": "zh", "license": "test", "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                 "weight": s.get("weight", 1.0)}
        if "clean" in s:
            entry["clean"] = s["clean"]
        if "text_fields" in s:
            entry["text_fields"] = s["text_fields"]
        entries.append(entry)
    raw = {"name": "test", "sources": entries, **top}
    if holdout:
        raw["holdout"] = {"fraction": holdout, "salt": "t"}
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def split_stream(part_split: Path, report: dict) -> tuple[np.ndarray, np.ndarray]:
    """(token stream, document starts) of one part's split, read straight from the files."""
    files = sorted(part_split.glob("tokens-*.bin"))
    dtype = np.dtype(report["dtype"])
    tokens = np.concatenate([np.fromfile(f, dtype=dtype) for f in files]) if files else np.zeros(0, dtype)
    starts = np.fromfile(part_split / "doc_starts.bin", dtype=np.int64)
    return tokens.astype(np.int64), starts


def documents_of(tokens: np.ndarray, starts: np.ndarray) -> list[tuple[int, ...]]:
    ends = list(starts[1:]) + [len(tokens)]
    return [tuple(tokens[a:b].tolist()) for a, b in zip(starts, ends)]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
