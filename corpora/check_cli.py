"""Validate corpus manifests and print what each source holds.

    python -m corpora check corpora_manifests/shared_zh_vocab.yaml [MORE.yaml ...] [--json]
    python -m vocab manifest check ...   (the same command under its old name)

Loads each manifest (keys, files, sha256), streams every source once and prints per source:
documents kept (and how many of them are in the held-out slice), characters, CJK share,
duplicates, excluded (the manifest's exclude: file) and short documents dropped, empty and undecodable records,
and the shares of its characters in documents of at least 4K, 16K and 64K characters (what a source's
``long_documents.min_chars`` would upsample for long-context training). Exits non-zero on any
problem: a manifest that does not load, a bad record, a source left with no documents, or a
source declared Chinese (language zh*) whose text is less than 20% Chinese characters.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from tqdm import tqdm

from zhllama.errors import UserError, raise_if_problems

from .manifest import SourceStats, iter_documents, load_manifest

MIN_CJK_SHARE_FOR_ZH = 0.2
LONG_THRESHOLDS = (4_000, 16_000, 64_000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", help="manifest YAML files")
    parser.add_argument("--on-decode-error", choices=["fail", "skip"], default=None,
                        help="override the manifests' on_decode_error")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def check_manifest(path: str, on_decode_error: str | None = None) -> dict:
    """Load and stream one manifest; return its report. Raises UserError listing all problems."""
    manifest = load_manifest(path, on_decode_error=on_decode_error)
    problems: list[str] = []
    sources = []
    for source in manifest.sources:
        stats = SourceStats()
        in_long = dict.fromkeys(LONG_THRESHOLDS, 0)  # characters in documents of at least that many
        try:
            for doc in tqdm(iter_documents(source, split="all", stats=stats), desc=source.name, unit=" docs",
                            leave=False, disable=None):
                for threshold in LONG_THRESHOLDS:
                    in_long[threshold] += len(doc.text) if len(doc.text) >= threshold else 0
        except UserError as exc:
            problems.append(f"source {source.name}: {exc}")
        share = stats.cjk_characters / stats.characters if stats.characters else 0.0
        if stats.documents == 0:
            problems.append(f"source {source.name}: no documents left after cleaning ({stats.records} records read)")
        elif source.language.lower().startswith("zh") and share < MIN_CJK_SHARE_FOR_ZH:
            problems.append(f"source {source.name}: language {source.language} but only {share:.1%} of its "
                            "characters are Chinese (wrong file or text_fields?)")
        sources.append({"name": source.name, "files": len(source.files), "format": source.format,
                        "language": source.language, "weight": source.weight, "cjk_share": round(share, 4),
                        "characters_in_documents_of_at_least": {str(k): v for k, v in in_long.items()},
                        **dataclasses.asdict(stats)})
    raise_if_problems(f"manifest {path}", problems)
    return {"manifest": str(path), "name": manifest.name, "fingerprint": manifest.fingerprint(),
            "holdout": dataclasses.asdict(manifest.holdout), "sources": sources}


def _long_shares(source: dict) -> str:
    """Shares of a source's characters in long documents: what `long_documents.min_chars` would upsample."""
    chars = max(source["characters"], 1)
    return "/".join(f"{v / chars:.0%}" for v in source["characters_in_documents_of_at_least"].values())


def format_report(report: dict) -> str:
    head = (f"{report['manifest']}  name={report['name']}  fingerprint={report['fingerprint'][:16]}  "
            f"holdout={report['holdout']['fraction']:g}")
    cols = ["source", "docs", "held_out", "chars", "cjk_share", "dups", "excluded", "short", "empty", "undecodable",
            "weight", "chars_in_docs_>=4K/16K/64K"]
    rows = [[s["name"], s["documents"], s["held_out_documents"], s["characters"], f"{s['cjk_share']:.1%}",
             s["duplicates"], s["excluded"], s["too_short"], s["empty"], s["undecodable"], f"{s['weight']:g}",
             _long_shares(s)] for s in report["sources"]]
    total = ["TOTAL"] + [sum(r[i] for r in rows) for i in (1, 2, 3)]
    cjk = sum(s["cjk_characters"] for s in report["sources"])
    total += [f"{cjk / total[3]:.1%}" if total[3] else "-"] + [sum(r[i] for r in rows) for i in (5, 6, 7, 8, 9)] + ["", ""]
    table = [cols] + rows + [total]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(cols))]
    lines = [head] + ["  ".join(str(v).rjust(w) if j else str(v).ljust(w) for j, (v, w) in enumerate(zip(r, widths)))
                      for r in table]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    reports, problems = [], []
    for path in args.manifests:
        try:
            reports.append(check_manifest(path, args.on_decode_error))
        except UserError as exc:
            problems.append(str(exc))
    if args.json:
        print(json.dumps({"ok": not problems, "reports": reports, "problems": problems}, ensure_ascii=False, indent=2))
    else:
        for report in reports:
            print(format_report(report))
            print()
    if problems:
        raise UserError("manifest check failed:\n" + "\n".join(problems))
    if not args.json:
        print(f"ok: {len(reports)} manifest(s) checked")
    return 0
