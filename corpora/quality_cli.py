"""Find low-quality documents (repetition, mojibake, symbols, non-Chinese text) and write the keys to leave out.

    python -m corpora quality corpora_manifests/shared_zh_pretrain.yaml --out corpora_manifests/quality.keys \
        [--workers 4] [--max-dup-10gram-fraction 0.3 ...]      # every threshold: --help
    # then, in the manifest:  exclude: {file: <path relative to base_dir>, sha256: <printed digest>}

Streams every source (training part and held-out slice alike, after cleaning and exact dedup) and
applies the rules of corpora/quality.py to each document: Gopher's repetition rules on characters
and words, wrongly decoded text (UTF-8 shown as GBK or cp1252), non-text symbols, and, in sources
whose ``language`` is Chinese (zh...), documents that are mostly not Chinese. A document that fails
any rule is listed. A report (OUT.json) counts each rule per source and shows examples with the
measured value. The rules are made for pretraining text: instruction answers (code, lists) trip the
repetition and Chinese-share rules more often (set a threshold to 0 or 1 to turn its rule off).
Any ``exclude:`` the manifest already has is ignored here.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import multiprocessing
import os
import time
from pathlib import Path

from tqdm import tqdm

from zhllama.errors import UserError, raise_if_problems

from .exclude import publish_keys
from .manifest import iter_documents, load_manifest
from .quality import QualitySettings, rule_names

EXAMPLES_PER_RULE = 5
BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest YAML")
    parser.add_argument("--out", required=True, help="the keys file to write (its report goes to OUT.json)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes measuring")
    for f in dataclasses.fields(QualitySettings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=float, default=f.default,
                            help=f"(default {f.default})")


def run(args: argparse.Namespace) -> int:
    settings = QualitySettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(QualitySettings)})
    problems = [f"--{p}" for p in settings.problems()]
    if args.workers < 1:
        problems.append(f"--workers must be >= 1, got {args.workers}")
    raise_if_problems("quality settings", problems)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file path")
    report = quality_report(args.manifest, settings, args.workers)
    hint = publish_keys(out, report.pop("keys"), report["salt"], [
        "zhllama quality: document keys to leave out (python -m corpora quality)",
        f"manifest: {report['manifest']} (fingerprint {report['fingerprint'][:16]})",
        f"settings: {dataclasses.asdict(settings)}"], report)
    print(summary(report))
    print(f"wrote {out}; add to the manifest:\n  {hint}")
    return 0


def _measure_batch(batch: tuple[QualitySettings, list[tuple[str, bool]]]) -> list[list[tuple[str, float]]]:
    settings, docs = batch
    return [settings.failures(text, chinese) for text, chinese in docs]


def _batches(manifest, settings: QualitySettings, meta: collections.deque):
    """(settings, [(text, chinese)]) batches of every document; ``meta`` gets (key, source, line, text) of each."""
    batch: list[tuple[str, bool]] = []
    for source in manifest.sources:
        chinese = source.language.lower().startswith("zh")
        for doc in tqdm(iter_documents(source, split="all", keys=True), desc=source.name, unit=" docs", disable=None):
            meta.append((doc.key, doc.source, doc.line, doc.text[:120]))
            batch.append((doc.text, chinese))
            if len(batch) == BATCH:
                yield settings, batch
                batch = []
    if batch:
        yield settings, batch


def quality_report(manifest_path: str, settings: QualitySettings, workers: int = 1) -> dict:
    """The keys to leave out and the counts (keys under "keys", bytes; the rest is JSON)."""
    manifest = load_manifest(manifest_path, with_exclude=False)  # from scratch, whatever is excluded now
    rules = rule_names()
    per_source = {s.name: {"documents": 0, "flagged": 0, **dict.fromkeys(rules, 0)} for s in manifest.sources}
    examples: dict[str, list] = {rule: [] for rule in rules}
    meta: collections.deque = collections.deque()
    keys, seen, started = [], 0, time.monotonic()
    batches = _batches(manifest, settings, meta)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        # in waves: Pool.imap would read the whole corpus ahead into its queue
        while wave := list(itertools.islice(batches, workers * 4)):
            for failed in itertools.chain.from_iterable(pool.imap(_measure_batch, wave) if pool
                                                       else map(_measure_batch, wave)):
                key, source, line, text = meta.popleft()
                seen += 1
                counts = per_source[source]
                counts["documents"] += 1
                if not failed:
                    continue
                keys.append(key)
                counts["flagged"] += 1
                for rule, value in failed:
                    counts[rule] += 1
                    if len(examples[rule]) < EXAMPLES_PER_RULE:
                        examples[rule].append({"source": source, "line": line, "value": value, "text": text})
    finally:
        if pool:
            pool.close()
            pool.join()
    seconds = time.monotonic() - started
    return {"keys": keys, "manifest": str(manifest_path), "fingerprint": manifest.fingerprint(),
            "salt": manifest.holdout.salt, "settings": dataclasses.asdict(settings), "sources": per_source,
            "totals": {"documents": seen, "flagged": len(keys), "seconds": round(seconds, 1),
                       "docs_per_s": seen / max(seconds, 1e-9)},
            "examples": {rule: found for rule, found in examples.items() if found}}


def summary(report: dict) -> str:
    rules = [r for r in rule_names() if any(s[r] for s in report["sources"].values())]
    width = max(8, *map(len, report["sources"]))
    lines = [f"{'source':<{width}} {'documents':>10} {'flagged':>8}" + "".join(f" {r:>{len(r)}}" for r in rules)]
    for name, s in report["sources"].items():
        lines.append(f"{name:<{width}} {s['documents']:>10,} {s['flagged']:>8,}"
                     + "".join(f" {s[r]:>{len(r)},}" for r in rules))
    total = report["totals"]
    lines.append(f"{total['flagged']:,} of {total['documents']:,} documents fail a rule; "
                 f"{total['docs_per_s']:,.0f} docs/s")
    return "\n".join(lines)
