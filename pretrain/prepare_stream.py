"""The streaming half of ``prepare``: documents in output order, batches, and the encoder pool.

Kept apart from ``prepare.py`` (keys, reports, the output folder) because this is the hot path:
every character of the corpus passes through here, so each step is written for throughput
(measured by ``benchmarks/prepare_throughput.py``).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import sys
from typing import Any, Iterator

from .shards import encode_batch, init_encoder


def document_stream(manifest: Any, shard: tuple[int, int], seed: int, stats: dict) -> Iterator[tuple[str, int, str]]:
    """(split, source index, text) in output order: the weighted training mix, then the holdout."""
    from corpora.manifest import Document, SourceStats, copies, iter_documents

    for source in manifest.sources:
        stats[source.name] = {"weight": source.weight, "train": SourceStats(), "validation": SourceStats(),
                              "written": {"train": 0, "validation": 0}}
        if source.long_documents is not None:
            # documents/characters: the long ones read; the characters the training mix holds, all and long ones
            stats[source.name]["long_documents"] = {**dataclasses.asdict(source.long_documents), "documents": 0,
                                                    "characters": 0, "mix_characters": 0, "mix_long_characters": 0}
    for index, source in enumerate(manifest.sources):
        long = stats[source.name].get("long_documents")
        # Pass r yields the documents drawn more than r times: repeats are a whole pass apart.
        for r in range(source.passes):
            counted = stats[source.name]["train"] if r == 0 else SourceStats()
            for doc in iter_documents(source, shard=shard, split="train", stats=counted):
                text = doc.text
                weight, is_long = source.weight_of(text), source.is_long(text)
                if is_long and r == 0:
                    long["documents"] += 1
                    long["characters"] += len(text)
                # copies() hashes the text only for a fractional weight; whole weights need no call.
                if weight > r and (weight >= r + 1 or copies(weight, Document(text, source.name, "", 0), seed) > r):
                    if long is not None:
                        long["mix_characters"] += len(text)
                        long["mix_long_characters"] += len(text) if is_long else 0
                    yield "train", index, text
    if manifest.holdout.fraction <= 0:
        return
    for index, source in enumerate(manifest.sources):
        if source.weight > 0:
            for doc in iter_documents(source, shard=shard, split="holdout", stats=stats[source.name]["validation"]):
                yield "validation", index, doc.text


def batches(stream: Iterator[tuple[str, int, str]], max_chars: int) -> Iterator[tuple[str, int, list[str], int]]:
    """Group consecutive documents of one split and source into batches of about ``max_chars``."""
    key, texts, chars = None, [], 0
    for split, source, text in stream:
        if texts and ((split, source) != key or chars >= max_chars):
            yield key[0], key[1], texts, chars
            texts, chars = [], 0
        key = (split, source)
        texts.append(text)
        chars += len(text)
    if texts:
        yield key[0], key[1], texts, chars


class EncoderPool:
    """Tokenize batches on ``num_proc`` processes (or in this one for 1), results in input order.

    On Linux the workers are forked after the tokenizer is built here, so they start in
    milliseconds with it already loaded (spawned workers re-imported numpy + tokenizers and
    re-parsed the tokenizer JSON: ~0.4 CPU-s each). Start the pool before any thread (tqdm's
    monitor) exists. Elsewhere (no safe fork) workers are spawned.
    """

    def __init__(self, backend_json: str, start_id: int, eos_id: int, dtype: str, num_proc: int):
        self.num_proc = num_proc
        self.pool = None
        if num_proc == 1:
            init_encoder(backend_json, start_id, eos_id, dtype, None)
            return
        import multiprocessing

        # Each worker gets an equal share of the cores for the Rust thread pool.
        threads = max(1, (os.cpu_count() or 1) // num_proc)
        init = (backend_json, start_id, eos_id, dtype, threads)
        if sys.platform.startswith("linux"):
            # init_encoder sets the Rust thread-pool variables for the children; keep the caller's own.
            saved = {k: os.environ.get(k) for k in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
            try:
                init_encoder(*init)  # before fork: the children inherit the loaded tokenizer
                self.pool = multiprocessing.get_context("fork").Pool(num_proc)  # forks all workers now
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        else:
            self.pool = multiprocessing.get_context("spawn").Pool(num_proc, initializer=init_encoder, initargs=init)

    def encoded(self, batches_: Iterator[tuple[str, int, list[str], int]]) -> Iterator[tuple]:
        """(split, source, characters, tokens, lengths) per batch, in input order."""
        if self.pool is None:
            for split, source, texts, chars in batches_:
                yield (split, source, chars, *encode_batch(texts))
            return
        pending: collections.deque = collections.deque()
        for split, source, texts, chars in batches_:
            pending.append((split, source, chars, self.pool.apply_async(encode_batch, (texts,))))
            if len(pending) >= 2 * self.num_proc:  # bounded: memory does not grow with the corpus
                split_, source_, chars_, result = pending.popleft()
                yield (split_, source_, chars_, *result.get())
        while pending:
            split_, source_, chars_, result = pending.popleft()
            yield (split_, source_, chars_, *result.get())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
