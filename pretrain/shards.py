"""Write one split of one part: token files of a fixed size plus document starts, streamed.

Memory stays flat whatever the corpus size: tokens and document offsets are appended to files
batch by batch. The layout is described in ``engine/packed.py`` (the reader; it lives in the engine
because every phase reads prepared folders).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from engine.packed import num_blocks


@dataclasses.dataclass
class SplitCounts:
    documents: int = 0
    tokens: int = 0
    characters: int = 0


class SplitWriter:
    """Append documents' token ids to ``folder/tokens-NNNNN.bin`` files of ``file_tokens`` each."""

    def __init__(self, folder: Path, dtype: np.dtype, file_tokens: int, block_size: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.file_tokens = file_tokens
        self.block_size = block_size
        self.counts = SplitCounts()
        self.files: list[dict[str, Any]] = []
        self._current = None
        self._starts = open(self.folder / "doc_starts.bin", "wb")
        self._sources = open(self.folder / "doc_sources.bin", "wb")

    def add(self, tokens: np.ndarray, lengths: np.ndarray, source: int, characters: int) -> None:
        """Append documents (``tokens`` concatenated, ``lengths`` per document) of one source."""
        starts = self.counts.tokens + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
        self._starts.write(starts.astype(np.int64).tobytes())
        self._sources.write(np.full(len(lengths), source, dtype=np.uint16).tobytes())
        self._write_tokens(tokens.astype(self.dtype, copy=False))
        self.counts.documents += len(lengths)
        self.counts.characters += characters

    def _write_tokens(self, tokens: np.ndarray) -> None:
        pos = 0
        while pos < len(tokens):
            if self._current is None or self.files[-1]["tokens"] >= self.file_tokens:
                self._roll()
            room = self.file_tokens - self.files[-1]["tokens"]
            chunk = tokens[pos:pos + room]
            self._current.write(chunk.tobytes())
            self.files[-1]["tokens"] += len(chunk)
            self.counts.tokens += len(chunk)
            pos += len(chunk)

    def _roll(self) -> None:
        if self._current is not None:
            self._current.close()
        name = f"tokens-{len(self.files):05d}.bin"
        self._current = open(self.folder / name, "wb")
        self.files.append({"name": name, "tokens": 0})

    def close(self) -> dict[str, Any]:
        """Flush everything; return this split's entry of the part report."""
        for fh in (self._current, self._starts, self._sources):
            if fh is not None:
                fh.close()
        return {
            "documents": self.counts.documents,
            "tokens": self.counts.tokens,
            # Every token but a document's START is a target once (see packed.py).
            "labelled_tokens": self.counts.tokens - self.counts.documents,
            "characters": self.counts.characters,
            "blocks": num_blocks(self.counts.tokens, self.block_size),
            "files": self.files,
        }


# --- tokenization, run in worker processes (kept light: tokenizers + numpy only) -------------

_WORKER: dict[str, Any] = {}


def init_encoder(tokenizer_json: str, start_id: int, eos_id: int, dtype: str, threads: int | None) -> None:
    """Set up the tokenizer of this process. ``threads`` caps the Rust thread pool (None: all cores)."""
    import os

    if threads is not None:  # must be set before the Rust thread pool starts
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        if threads == 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    # "</s>" written inside a document is text (as sentencepiece and llama.cpp read plain text);
    # document boundaries are the ids added below, never text.
    tokenizer.encode_special_tokens = True
    _WORKER.update(tokenizer=tokenizer, start=start_id, eos=eos_id, dtype=np.dtype(dtype))


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[START] + ids + [EOS]`` of every text, concatenated, and the length of each."""
    tok, start, eos = _WORKER["tokenizer"], _WORKER["start"], _WORKER["eos"]
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    flat: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for i, enc in enumerate(encodings):
        ids = enc.ids
        flat.append(start)
        flat.extend(ids)
        flat.append(eos)
        lengths[i] = len(ids) + 2
    return np.array(flat, dtype=_WORKER["dtype"]), lengths
