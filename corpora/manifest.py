"""Corpus manifests: the one place a phase learns which text it reads (no ad hoc globs).

    m = load_manifest("corpora_manifests/shared_zh_pretrain.yaml")   # validates, checks sha256
    for doc in iter_documents(m.sources[0], shard=(0, 4)): ...        # streams, cleans
    for doc in iter_weighted(m, seed=0): ...                          # the weighted mix

A manifest (YAML)::

    name: shared_zh_pretrain            # required
    description: free text              # optional
    base_dir: ..                        # relative paths resolve against this folder, itself
                                        # relative to the manifest's folder (default: ".")
    on_decode_error: fail               # fail | skip (skip-and-count undecodable lines)
    holdout: {fraction: 0.05, salt: v1} # optional: a fixed slice no phase trains on (see below)
    exclude: {file: near_dups.keys, sha256: 3f5c…}  # optional: document keys no phase reads, or a list
                                        # of such files (corpora/exclude.py)
    sources:
      - name: cmrc2018                  # unique; [A-Za-z0-9_.-]
        path: ../shared/data/pretrain/cmrc2018_dev_contexts.txt  # file, folder, glob, or a list
        format: txt                     # txt (a document per line) | jsonl | json (an array)
        text_fields: [output]           # json/jsonl/datasets: fields joined by "\\n", empty skipped;
                                        # a dotted path reaches into records ("instances.0.output");
                                        # ["."] takes records that are plain strings
        language: zh
        license: CC BY-SA 4.0
        sha256: 2c1e86da…               # one file: the hex digest; several: {relative path: digest}
        weight: 1.0                     # see iter_weighted
        clean: {nfkc: false, t2s: false, min_chars: 1, dedup: true}
        long_documents: {min_chars: 16000, weight: 4.0}  # optional, pretraining: long documents drawn
                                        # this often instead (length upsampling for long-context training)

Instead of ``path`` a source may name ``hf_disk: FOLDER`` (a ``datasets`` ``save_to_disk``
folder; its files are listed and checked like a folder) or ``hf_hub: NAME`` with
``hf_config``/``hf_split``/``hf_revision`` (streamed from the hub; no sha256 can be checked, so
``hf_revision`` is required to keep the fingerprint meaningful). Both use ``text_fields``.

Document keys. Every document is keyed by a 16-byte BLAKE2b digest of its raw text (fields
joined, surrounding whitespace stripped, before cleaning), salted by ``holdout.salt``:

- holdout: the document is held out iff its first 8 bytes, read as a fraction of 2**64, are
  below ``holdout.fraction``. ``iter_documents`` yields the training part by default
  (``split="train"``), so no phase trains on the slice unless it asks (``split="holdout"``).
- shard ``(i, n)``: the document belongs to part ``i`` iff the last 8 bytes mod ``n`` == ``i``.
- dedup: a document is a duplicate iff an earlier document of the same source has the same key.

Because all three use the same key, exact duplicates always fall in the same split and the same
shard. Dedup inside one shard therefore equals dedup of the whole source: the n parts are
disjoint and their union is exactly the unsharded output (order aside), and a duplicate of a
held-out document never leaks into training. The price: "exact duplicate" means identical raw
text; two documents that only become identical after NFKC/t2s are both kept. Dedup keeps one
16-byte key per unique document in memory (~100 bytes each in Python); dedup a multi-billion
document corpus offline instead.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Iterator

from .cleaning import CJK_COUNT_CHUNK_CHARS, cjk_count_many, clean_text
from .readers import read_records
from .schema import Format, Holdout, Manifest, Source, Split, load_manifest

__all__ = [
    "Document", "Format", "Holdout", "Manifest", "Source", "SourceStats", "Split", "copies", "document_key",
    "is_held_out", "iter_documents", "iter_weighted", "load_manifest", "shard_of",
]


@dataclasses.dataclass(frozen=True)
class Document:
    text: str
    source: str
    file: str
    line: int  # 1-based line of txt/jsonl, line where a json record starts, row number of datasets
    # document_key of the raw text, when computed (always with keys=True); not part of equality
    key: bytes | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass
class SourceStats:
    """Counts kept while iterating one source (pass one to ``iter_documents(stats=...)``)."""

    records: int = 0  # records read (lines / array items / rows)
    empty: int = 0  # no text at all
    undecodable: int = 0  # skipped lines that were not UTF-8 (on_decode_error: skip)
    other_split: int = 0  # held out (or, with split="holdout", not held out)
    other_shard: int = 0
    duplicates: int = 0
    excluded: int = 0  # listed in the manifest's exclude: files (near-duplicates, contamination)
    too_short: int = 0  # dropped by min_chars after cleaning
    documents: int = 0  # yielded
    held_out_documents: int = 0  # of those, in the held-out slice (only non-zero with split="all")
    characters: int = 0
    cjk_characters: int = 0



def document_key(text: str, salt: str = "") -> bytes:
    """16-byte key of a document's raw text: holdout, shard and dedup all derive from it."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16,
                           key=salt.encode("utf-8")[:64]).digest()


def is_held_out(key: bytes, fraction: float) -> bool:
    return fraction > 0 and int.from_bytes(key[:8], "big") < fraction * 2**64


def shard_of(key: bytes, n: int) -> int:
    return int.from_bytes(key[8:], "big") % n


def iter_documents(source: Source, *, shard: tuple[int, int] | None = None, split: Split = "train",
                   stats: SourceStats | None = None, keys: bool = False) -> Iterator[Document]:
    """Stream one source's cleaned documents (never loads a corpus whole).

    ``shard=(i, n)`` yields the i-th of n disjoint parts (see the module doc); ``split`` picks the
    training part (default), the held-out slice, or all. ``stats`` is updated as documents pass.
    Documents whose key is in ``source.exclude`` are left out; ``keys=True`` fills ``Document.key``.
    """
    if shard is not None:
        i, n = shard
        if not (isinstance(n, int) and n >= 1 and isinstance(i, int) and 0 <= i < n):
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    if split not in ("train", "holdout", "all"):
        raise ValueError(f"split must be train, holdout or all, got {split!r}")
    stats = stats if stats is not None else SourceStats()
    seen: set[bytes] = set()
    fraction, dedup = source.holdout.fraction, source.clean.dedup
    sharded = shard is not None and shard[1] > 1
    # The key decides holdout, shard and dedup; this is prepare's hot path, so skip hashing when
    # none of them is asked for (the key would not change any decision).
    exclude = source.exclude
    needs_key = fraction > 0 or sharded or dedup or bool(exclude) or keys
    # Han characters are counted over chunks of documents: a per-document regex cost ~15% of
    # prepare's CPU time, and only the per-source sum is reported.
    pending: list[str] = []
    pending_chars = 0
    try:
        for file, line, raw in read_records(source):
            stats.records += 1
            if raw is None:
                stats.undecodable += 1
                continue
            raw = raw.strip()
            if not raw:
                stats.empty += 1
                continue
            held, key = False, None
            if needs_key:
                key = document_key(raw, source.holdout.salt)
                if key in exclude:
                    stats.excluded += 1
                    continue
                held = is_held_out(key, fraction)
            if (split == "train" and held) or (split == "holdout" and not held):
                stats.other_split += 1
                continue
            if sharded and shard_of(key, shard[1]) != shard[0]:
                stats.other_shard += 1
                continue
            if dedup:
                if key in seen:
                    stats.duplicates += 1
                    continue
                seen.add(key)
            text = clean_text(raw, source.clean)
            if text is None:
                stats.too_short += 1
                continue
            stats.documents += 1
            stats.held_out_documents += held
            stats.characters += len(text)
            pending.append(text)
            pending_chars += len(text)
            if pending_chars >= CJK_COUNT_CHUNK_CHARS:
                stats.cjk_characters += cjk_count_many(pending)
                pending, pending_chars = [], 0
            yield Document(text, source.name, file, line, key)
    finally:  # also when the consumer stops early: the counts cover what was yielded
        stats.cjk_characters += cjk_count_many(pending)


def repeat_count(weight: float, seed: int, *identity: str) -> int:
    """How many times an item of sampling weight ``weight`` is used: the one rule of every phase.

    floor(w) times, plus once more with probability w - floor(w), decided by a hash of (seed,
    identity...) — so the expected count is exactly w, the choice is deterministic for a seed, and
    identical across shards, machines and reorderings.
    """
    whole = math.floor(weight)
    frac = weight - whole
    if frac <= 0:
        return whole
    h = hashlib.blake2b("\0".join([str(seed), *identity]).encode("utf-8", "surrogatepass"), digest_size=8)
    return whole + (int.from_bytes(h.digest(), "big") < frac * 2**64)


def copies(weight: float, doc: Document, seed: int) -> int:
    """How many times a document appears in the weighted mix (``repeat_count`` of its source and text)."""
    return repeat_count(weight, seed, doc.source, doc.text)


def iter_weighted(manifest: Manifest, *, seed: int = 0, shard: tuple[int, int] | None = None,
                  split: Split = "train") -> Iterator[Document]:
    """Stream the manifest's weighted mix: source after source, each in ceil(weight) passes.

    Pass r (0-based) of a source yields every document whose ``copies(...) > r``, so repeats are a
    whole pass apart rather than adjacent (good for packing). A document's weight is its source's, or
    ``long_documents.weight`` when it is long (``Source.weight_of``). Weight 0 excludes a source. The
    order is by source: a consumer that needs a mixed order must shuffle (``vocab train`` does:
    SentencePiece reservoir-samples its input).
    """
    for source in manifest.sources:
        for r in range(source.passes):
            for doc in iter_documents(source, shard=shard, split=split):
                if copies(source.weight_of(doc.text), doc, seed) > r:
                    yield doc
