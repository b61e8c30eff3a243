"""Stream a manifest's training part through an ItemIndex, in one process or in several.

    scan = scan_manifest(manifest, fields_per_item, settings, workers=8)
    scan.index.verdicts(); scan.touched[doc_id]; scan.keys[doc_id]

With ``workers`` > 1 each process reads every file but scans only its shard of the documents
(corpora.manifest's key-based shards, so every document is scanned exactly once) and returns what it
found; document ids are ``local index × workers + shard``, so they are unique and the merged result
does not depend on which process finished first. Worker 0 shows its progress (its share is about
1/workers of the work).
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from corpora.manifest import Manifest, iter_documents

from .contamination import ContaminationSettings, ItemIndex


@dataclasses.dataclass
class PartScan:
    found: list[set[tuple[int, int]]]  # per item: (first unit, length) of the grams found
    documents: list[list[int]]  # per item: the ids of the documents that touched it
    touched: dict[int, dict]  # document id -> {source, file, line}, for documents that touched an item
    keys: dict[int, bytes]  # document id -> document key, for the same documents
    documents_scanned: int = 0
    characters: int = 0


@dataclasses.dataclass
class ManifestScan:
    index: ItemIndex  # holds the merged findings: index.verdicts()
    touched: dict[int, dict]
    keys: dict[int, bytes]
    documents_scanned: int
    characters: int
    seconds: float


def scan_part(manifest: Manifest, index: ItemIndex, shard: tuple[int, int], progress: bool) -> PartScan:
    """Scan one shard of the training part into ``index`` (its findings are shared with the result)."""
    part, parts = shard
    out = PartScan(index.found, index.documents, {}, {})
    local = 0
    for source in manifest.sources:
        label = f"scan {source.name}" + (f" (part 1 of {parts})" if parts > 1 else "")
        for doc in tqdm(iter_documents(source, shard=shard, keys=True), desc=label, unit=" docs",
                        disable=None if progress else True):
            doc_id = local * parts + part
            if index.scan(doc_id, doc.text):
                out.touched[doc_id] = {"source": doc.source, "line": doc.line,
                                       "file": source.relative(Path(doc.file)) if doc.file else ""}
                out.keys[doc_id] = doc.key
            local += 1
            out.characters += len(doc.text)
    out.documents_scanned = local
    return out


def _scan_in_worker(manifest: Manifest, fields_per_item: Sequence[Sequence[str]], settings: ContaminationSettings,
                    shard: tuple[int, int], progress: bool) -> PartScan:
    return scan_part(manifest, ItemIndex(fields_per_item, settings), shard, progress)


def scan_manifest(manifest: Manifest, fields_per_item: Sequence[Sequence[str]], settings: ContaminationSettings,
                  workers: int = 1) -> ManifestScan:
    started = time.monotonic()
    index = ItemIndex(fields_per_item, settings)
    if workers == 1:  # into this index directly: one build of it, not two
        part = scan_part(manifest, index, (0, 1), True)
        return ManifestScan(index, part.touched, part.keys, part.documents_scanned, part.characters,
                            time.monotonic() - started)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # spawn: a clean interpreter per worker (no forked tqdm threads or locks); each builds its own index
        futures = [pool.submit(_scan_in_worker, manifest, fields_per_item, settings, (i, workers), i == 0)
                   for i in range(workers)]
        parts = [f.result() for f in futures]
    touched, keys = {}, {}
    for part in parts:
        index.absorb(part.found, part.documents)
        touched.update(part.touched)
        keys.update(part.keys)
    return ManifestScan(index, touched, keys, sum(p.documents_scanned for p in parts),
                        sum(p.characters for p in parts), time.monotonic() - started)
