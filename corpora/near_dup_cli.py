"""Find near-duplicate documents across a manifest and write the keys to leave out.

    python -m corpora near-dups corpora_manifests/shared_zh_pretrain.yaml --out corpora_manifests/near_dups.keys
    # then, in the manifest:  exclude: {file: <path relative to base_dir>, sha256: <printed digest>}

Streams every source in manifest order (training part and held-out slice alike, after cleaning and
exact dedup) and keeps the first document of each group whose character 5-gram sets are at least 80%
alike (MinHash + LSH, corpora/near_dup.py); every later one is listed. Across the held-out boundary
this also removes training twins of held-out documents (or held-out twins of training ones), so
held-out bits/char measure unseen text. A report (OUT.json) counts copies per source, pairs across
the boundary, and shows examples. Any ``exclude:`` the manifest already has is ignored here.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from tqdm import tqdm

from zhllama.errors import UserError, raise_if_problems

from .exclude import publish_keys
from .manifest import Document, is_held_out, iter_documents, load_manifest
from .near_dup import NearDupIndex, NearDupSettings

EXAMPLES = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = NearDupSettings()
    parser.add_argument("manifest", help="manifest YAML")
    parser.add_argument("--out", required=True, help="the keys file to write (its report goes to OUT.json)")
    parser.add_argument("--threshold", type=float, default=defaults.threshold,
                        help=f"n-gram Jaccard similarity that makes a copy (default {defaults.threshold})")
    parser.add_argument("--ngram", type=int, default=defaults.ngram, help=f"characters per n-gram ({defaults.ngram})")
    parser.add_argument("--permutations", type=int, default=defaults.permutations,
                        help=f"MinHash slots ({defaults.permutations})")
    parser.add_argument("--bands", type=int, default=defaults.bands, help=f"LSH bands ({defaults.bands})")


def run(args: argparse.Namespace) -> int:
    settings = NearDupSettings(args.threshold, args.ngram, args.permutations, args.bands)
    raise_if_problems("near-dups settings", [f"--{p}" for p in settings.problems()])
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file path")
    report = near_duplicate_report(args.manifest, settings)
    hint = publish_keys(out, report.pop("keys"), report["salt"], [
        "zhllama near-duplicates: document keys to leave out (python -m corpora near-dups)",
        f"manifest: {report['manifest']} (fingerprint {report['fingerprint'][:16]})",
        f"settings: {dataclasses.asdict(settings)}"], report)
    total = report["totals"]
    print(f"{total['copies']:,} of {total['documents']:,} documents are near-duplicates of earlier ones "
          f"({total['across_holdout']:,} across the held-out boundary); {total['docs_per_s']:,.0f} docs/s")
    print(f"wrote {out}; add to the manifest:\n  {hint}")
    return 0


def near_duplicate_report(manifest_path: str, settings: NearDupSettings) -> dict:
    """The keys to leave out and the counts (keys under "keys", bytes; the rest is JSON)."""
    manifest = load_manifest(manifest_path, with_exclude=False)  # from scratch, whatever is excluded now
    index = NearDupIndex(settings)
    kept: dict[int, tuple[str, str, int, bool]] = {}  # (source, file, line, held out) of each kept document
    keys, examples = [], []
    per_source = {s.name: {"documents": 0, "copies": 0} for s in manifest.sources}
    offered, across, started = 0, 0, time.monotonic()
    for source in manifest.sources:
        for doc in tqdm(iter_documents(source, split="all", keys=True), desc=source.name, unit=" docs", disable=None):
            held = is_held_out(doc.key, source.holdout.fraction)
            match = index.offer(offered, doc.text)
            per_source[doc.source]["documents"] += 1
            if match is None:
                kept[offered] = (doc.source, source.relative(Path(doc.file)) if doc.file else "", doc.line, held)
            else:
                per_source[doc.source]["copies"] += 1
                keys.append(doc.key)
                across += held != kept[match.kept][3]
                if len(examples) < EXAMPLES:
                    examples.append(_example(doc, kept[match.kept], match.similarity, held))
            offered += 1
    seconds = time.monotonic() - started
    return {"keys": keys, "manifest": str(manifest_path), "fingerprint": manifest.fingerprint(),
            "salt": manifest.holdout.salt, "settings": dataclasses.asdict(settings), "sources": per_source,
            "totals": {"documents": offered, "copies": len(keys), "across_holdout": across,
                       "seconds": round(seconds, 1), "docs_per_s": offered / max(seconds, 1e-9)},
            "examples": examples}


def _example(doc: Document, kept: tuple[str, str, int, bool], similarity: float, held: bool) -> dict:
    return {"copy": {"source": doc.source, "line": doc.line, "held_out": held, "text": doc.text[:80]},
            "of": {"source": kept[0], "file": kept[1], "line": kept[2], "held_out": kept[3]},
            "similarity": round(similarity, 3)}
