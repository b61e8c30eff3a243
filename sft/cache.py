"""Tokenize an instruction file once; reuse the result while its content key is unchanged.

The key covers everything that changes the tokens: the file's sha256, the tokenizer's
fingerprint (``zhllama.tokenizer_files.tokenizer_fingerprint``: content, not the folder name), the
template (name, system prompt, chat template text), ``max_seq_length`` and the encoder version. A cache entry is a folder
``CACHE_DIR/<key>/`` with ``tokens.npy``, ``labels.npy`` (int32, flat), ``offsets.npy`` (int64,
n+1), ``records.npy`` (source record of each sample) and ``stats.json``, written to a temp
folder and renamed, so a crash never leaves a half-entry that looks valid.

With several ranks, local rank 0 tokenizes; the others wait for the entry to appear.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from zhllama.errors import UserError
from zhllama.files import atomic_output_dir, sha256_file, sha256_json

from .collate import TokenizedSamples
from .data import Conversation
from .templates import IGNORE_INDEX, TemplateSpec, encode_many, truncate

_ARRAYS = ("tokens", "labels", "offsets", "records")
ENCODER_VERSION = 1  # bump when encode_conversation changes its output for the same inputs


@dataclass
class FileStats:
    records: int = 0  # conversations read from the file
    kept: int = 0  # samples in the cache
    truncated: int = 0  # kept, but cut to max_seq_length
    dropped_no_trainable_token: int = 0  # truncation left no response token: dropped and counted
    tokens: int = 0
    trainable_tokens: int = 0


PAIR_ROWS = "chosen, rejected; last answer only"  # DPO's rows from a record (the key names it)


def cache_key(file_sha256: str, tok_fingerprint: str, spec: TemplateSpec, max_seq_length: int,
              pairs: bool = False, rows: str = PAIR_ROWS) -> str:
    """``rows``: what the rows of a pair file are (KTO makes other rows of the same file: sft/kto.py)."""
    return sha256_json({
        "encoder_version": ENCODER_VERSION,
        "file_sha256": file_sha256,
        "tokenizer": tok_fingerprint,
        "template": dataclasses.asdict(spec),
        "max_seq_length": max_seq_length,
        **({"pairs": rows} if pairs else {}),
    })


def last_answer_only(labels: list[int]) -> list[int]:
    """Labels of the final answer (its last run of trained tokens) only: in a preference pair the earlier
    turns are shared context, not what is compared."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [IGNORE_INDEX] * start + labels[start:]


def encode_all(conversations: Sequence[Conversation], tokenizer: Any, spec: TemplateSpec, max_seq_length: int,
               desc: str = "tokenizing", pairs: bool = False) -> tuple[TokenizedSamples, FileStats]:
    """``pairs``: conversations come as chosen, rejected, chosen, ... and only their final answers are labelled."""
    stats = FileStats(records=len(conversations))
    kept: list[tuple[list[int], list[int]]] = []
    records: list[int] = []
    encoded = encode_many(conversations, tokenizer, spec)
    for number, (ids, labels) in enumerate(tqdm(encoded, total=len(conversations), desc=desc, unit="rec",
                                                disable=len(conversations) < 2000)):
        cut = truncate(ids, last_answer_only(labels) if pairs else labels, max_seq_length)
        if cut is None:
            stats.dropped_no_trainable_token += 1
            continue
        stats.truncated += len(ids) > max_seq_length
        kept.append(cut)
        records.append(number)
    samples = TokenizedSamples.from_lists(kept, records)
    stats.kept = len(kept)
    stats.tokens = int(len(samples.tokens))
    stats.trainable_tokens = int((samples.labels != IGNORE_INDEX).sum())
    return samples, stats


def _load_entry(entry: Path) -> tuple[TokenizedSamples, FileStats]:
    samples = TokenizedSamples(*(np.load(entry / f"{name}.npy") for name in _ARRAYS))
    stats = FileStats(**json.loads((entry / "stats.json").read_text(encoding="utf-8"))["stats"])
    return samples, stats


def cached_tokenize(path: str | Path, conversations: Sequence[Conversation], tokenizer: Any, spec: TemplateSpec,
                    max_seq_length: int, cache_dir: str | Path, tok_fingerprint: str,
                    wait_seconds: float = 3600.0, pairs: bool = False,
                    rows: str = PAIR_ROWS) -> tuple[TokenizedSamples, FileStats, str]:
    """Samples of one file from the cache, tokenizing on a miss. Returns (samples, stats, key)."""
    key = cache_key(sha256_file(path), tok_fingerprint, spec, max_seq_length, pairs, rows)
    entry = Path(cache_dir) / key
    if (entry / "stats.json").is_file():
        return (*_load_entry(entry), key)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:  # another rank on this machine is writing it
        deadline = time.monotonic() + wait_seconds
        while not (entry / "stats.json").is_file():
            if time.monotonic() > deadline:
                raise UserError(f"waited {wait_seconds:.0f}s for local rank 0 to tokenize {path} into {entry}")
            time.sleep(0.5)
        return (*_load_entry(entry), key)
    samples, stats = encode_all(conversations, tokenizer, spec, max_seq_length, desc=f"tokenizing {Path(path).name}",
                                pairs=pairs)
    try:
        with atomic_output_dir(entry) as tmp:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(samples, name))
            meta = {"file": str(path), "template": dataclasses.asdict(spec), "max_seq_length": max_seq_length,
                    "tokenizer_fingerprint": tok_fingerprint, "stats": dataclasses.asdict(stats)}
            (tmp / "stats.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    except UserError:  # written meanwhile by another process with the same key: identical content
        pass
    return samples, stats, key
