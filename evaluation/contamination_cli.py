"""Which benchmark items are in the training corpus? Report them, list the documents to leave out.

    python -m evaluation contamination corpora_manifests/shared_zh_pretrain.yaml \\
        --benchmark ceval=data/ceval --benchmark cmmlu=data/cmmlu --benchmark mmlu=data/mmlu \\
        --eval-manifest corpora_manifests/eval_belle.yaml --reading cmrc=data/cmrc2018_dev.json \\
        --math gsm8k=data/gsm8k/test.jsonl --out runs/contamination.keys
    # then: score the clean items apart     python -m evaluation choice ... --contamination runs/contamination.keys.json
    #       python -m evaluation reading ... --contamination runs/contamination.keys.json
    #       python -m evaluation math ... --contamination runs/contamination.keys.json
    #       or train without those documents  exclude: [{file: ..., sha256: <printed>}]   in the manifest

Reads every item of every split present (C-Eval, CMMLU, MMLU in their official layouts; every
document of each source of an ``--eval-manifest``, e.g. an SFT evaluation set; every passage, with
its questions, of a ``--reading`` set; every problem's question of a ``--math`` set), then streams the manifest's training part once and finds the
items' 13-unit grams in it (evaluation/contamination.py: a unit is a Han character or a word, so spacing
and punctuation do not hide a copy). Writes the keys of the training documents that contain a
contaminated item (the manifest's ``exclude:`` format) and a report
(OUT.json): per benchmark, split and subject the items clean / partial / contaminated, and each touched
item with its coverage and the documents (source, file, line) it was found in.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from corpora.exclude import publish_keys
from corpora.manifest import iter_documents, load_manifest
from zhllama.errors import UserError, raise_if_problems
from zhllama.files import sha256_file

from .base_cli import name_pairs
from .benchmarks import LAYOUTS, item_key, read_all_splits
from .contamination import ContaminationSettings, Verdict
from .contamination_scan import scan_manifest

DOCUMENTS_PER_ITEM = 3  # documents named per touched item in the report


@dataclasses.dataclass(frozen=True)
class EvalItem:
    benchmark: str
    split: str
    subject: str
    where: str
    key: str
    fields: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ContaminationSettings()
    parser.add_argument("manifest", help="the training manifest YAML (its training part is scanned)")
    parser.add_argument("--benchmark", action="append", default=[], metavar="NAME=DIR",
                        help=f"a benchmark folder in its official layout; NAME one of {sorted(LAYOUTS)} (repeatable)")
    parser.add_argument("--eval-manifest", action="append", default=[], metavar="YAML",
                        help="a manifest whose every document is an evaluation item (repeatable)")
    parser.add_argument("--reading", action="append", default=[], metavar="NAME=FILE",
                        help="a reading set in SQuAD's layout (CMRC 2018, DRCD ...): each passage with its "
                             "questions is an item (repeatable; then `evaluation reading --contamination`)")
    parser.add_argument("--math", action="append", default=[], metavar="NAME=FILE",
                        help="a math set (GSM8K, CMATH, MGSM ...): each problem's question is an item (repeatable; "
                             "then `evaluation math --contamination`)")
    parser.add_argument("--out", required=True, help="the keys file to write (its report goes to OUT.json)")
    parser.add_argument("--workers", type=int, default=1,
                        help=f"processes that scan a share of the documents each (this machine has {os.cpu_count()})")
    parser.add_argument("--ngram", type=int, default=defaults.ngram, help=f"units per gram ({defaults.ngram})")
    parser.add_argument("--min-units", type=int, default=defaults.min_units,
                        help=f"shorter fields are not checked ({defaults.min_units})")
    parser.add_argument("--max-items", type=int, default=defaults.max_items,
                        help=f"a gram in this many items is a template and dropped ({defaults.max_items})")
    parser.add_argument("--t2s", action="store_true",
                        help="compare after Traditional -> Simplified conversion (finds copies in the other script)")
    parser.add_argument("--min-coverage", type=float, default=defaults.min_coverage,
                        help=f"share of an item's units found that makes it contaminated ({defaults.min_coverage})")


def run(args: argparse.Namespace) -> int:
    settings = ContaminationSettings(args.ngram, args.min_units, args.max_items, args.min_coverage, args.t2s)
    problems = [f"--{p}" for p in settings.problems()]
    specs = benchmark_specs(args.benchmark, problems)
    readings = name_pairs(args.reading, "--reading", problems)
    maths = name_pairs(args.math, "--math", problems)
    for flag, sets in (("--reading", readings), ("--math", maths)):
        problems += [f"{flag} {n}={f}: not a file" for n, f in sets if not Path(f).is_file()]
    names = [n for n, _ in specs] + [n for n, _ in readings] + [n for n, _ in maths]  # --benchmark: benchmark_specs
    for flag, sets in (("--reading", readings), ("--math", maths)):
        problems += [f"{flag} {n}: the name is given twice" for n in sorted({n for n, _ in sets if names.count(n) > 1})]
    if not specs and not args.eval_manifest and not readings and not maths:
        problems.append("give at least one --benchmark NAME=DIR, --reading NAME=FILE, --math NAME=FILE or "
                        "--eval-manifest YAML")
    out = Path(args.out)
    if out.is_dir():
        problems.append(f"--out {out} is a folder; give a file path")
    if args.workers < 1:
        problems.append(f"--workers: expected >= 1, got {args.workers}")
    raise_if_problems("contamination settings", problems)
    manifest = load_manifest(args.manifest)  # checked before the benchmarks are read
    items, data = read_items(specs, args.eval_manifest, readings, maths)
    report, keys = contamination_report(manifest, items, settings, args.workers)
    report = {"manifest": str(args.manifest), "fingerprint": manifest.fingerprint(), "salt": manifest.holdout.salt,
              "settings": dataclasses.asdict(settings), "data": data, **report}
    hint = publish_keys(out, keys, manifest.holdout.salt, [
        "zhllama benchmark contamination: training documents that contain benchmark items "
        "(python -m evaluation contamination)",
        f"manifest: {args.manifest} (fingerprint {report['fingerprint'][:16]})",
        f"benchmarks: {', '.join(sorted(data))}", f"settings: {dataclasses.asdict(settings)}"], report)
    print(summary_table(report["results"]))
    totals = report["totals"]
    print(f"scanned {totals['documents']:,} documents ({totals['characters']:,} characters, "
          f"{totals['characters_per_s'] / 1e6:.1f} M/s); {len(keys):,} contain a contaminated item")
    print(f"wrote {out} and {out.name}.json; to train without those documents, add to the manifest's exclude:\n"
          f"  - {hint.removeprefix('exclude: ')}")
    return 0


def benchmark_specs(values: list[str], problems: list[str]) -> list[tuple[str, str]]:
    specs = []
    for name, folder in name_pairs(values, "--benchmark", problems):
        if name not in LAYOUTS:
            problems.append(f"--benchmark {name + '=' + folder!r}: expected NAME=DIR with NAME one of {sorted(LAYOUTS)}")
        else:
            specs.append((name, folder))
    names = [n for n, _ in specs]
    problems += [f"--benchmark {n} given twice" for n in sorted({n for n in names if names.count(n) > 1})]
    return specs


def reading_items(name: str, path: str) -> list[EvalItem]:
    """One item per passage of a reading set, its questions as more fields: the questions of a passage
    share its grams, which would read as a template (``max_items``) if each question were an item.
    ``evaluation reading`` finds a question's status by the key of its passage."""
    from .reading_data import read_reading_set

    questions: dict[str, list] = {}
    for q in read_reading_set(path).questions:
        questions.setdefault(q.context.strip(), []).append(q)
    return [EvalItem(name, "all", name, f"{path}: data[{qs[0].article}], question {qs[0].key}", item_key([context]),
                     (context, *(q.question for q in qs))) for context, qs in questions.items()]


def math_items(name: str, path: str) -> list[EvalItem]:
    """One item per problem of a math set: its question (answers are numbers, too short to find)."""
    from .math_data import math_questions

    return [EvalItem(name, "all", name, where, item_key([question]), (question,))
            for where, question in math_questions(path)]


def read_items(specs: list[tuple[str, str]], eval_manifests: list[str],
               readings: list[tuple[str, str]] = (), maths: list[tuple[str, str]] = ()) -> tuple[list[EvalItem], dict]:
    """Every item to look for, and what was read (files and their sha256, per benchmark)."""
    items: list[EvalItem] = []
    data: dict[str, dict] = {}
    for kind, sets, read in (("reading", readings, reading_items), ("math", maths, math_items)):
        for name, path in sets:
            items += read(name, path)
            data[name] = {kind: path, "sha256": {path: sha256_file(path)}}
    for name, folder in specs:
        by_split, files = read_all_splits(name, folder)
        for split, split_items in by_split.items():
            items += [EvalItem(name, split, it.subject, it.where, it.key, (it.question, *it.choices))
                      for it in split_items]
        data[name] = {"data": folder, "sha256": {f: sha256_file(f) for f in files}}
    for path in eval_manifests:
        manifest = load_manifest(path)
        for source in manifest.sources:
            if source.name in data:
                raise UserError(f"--eval-manifest {path}: source {source.name!r} has the name of another benchmark")
            for doc in iter_documents(source, split="all"):
                items.append(EvalItem(source.name, "all", source.name, f"{doc.file}:{doc.line}",
                                      item_key([doc.text]), (doc.text,)))
            data[source.name] = {"manifest": path, "fingerprint": manifest.fingerprint()}
    return items, data


def contamination_report(manifest, items: list[EvalItem], settings: ContaminationSettings,
                         workers: int = 1) -> tuple[dict, list[bytes]]:
    """The JSON report (results, touched items, totals) and the keys of the documents to leave out."""
    scan = scan_manifest(manifest, [it.fields for it in items], settings, workers)
    verdicts = scan.index.verdicts()
    leave_out = sorted({d for v in verdicts if v.status == "contaminated" for d in v.documents})
    report = {
        "results": _results(items, verdicts),
        "items": [_touched(it, v, scan.touched) for it, v in zip(items, verdicts) if v.documents],
        "totals": {"items": len(items), "template_grams": scan.index.templates, "documents": scan.documents_scanned,
                   "characters": scan.characters, "documents_touching_items": len(scan.touched),
                   "documents_to_leave_out": len(leave_out), "workers": workers, "seconds": round(scan.seconds, 1),
                   "characters_per_s": scan.characters / max(scan.seconds, 1e-9)},
    }
    return report, [scan.keys[d] for d in leave_out]


def _results(items: list[EvalItem], verdicts: list[Verdict]) -> dict:
    """{benchmark: {split: counts, with per-subject counts}}."""
    out: dict[str, dict] = {}
    for item, verdict in zip(items, verdicts):
        split = out.setdefault(item.benchmark, {}).setdefault(item.split, _counts())
        subject = split["subjects"].setdefault(item.subject, _counts(subjects=False))
        for counts in (split, subject):
            counts["items"] += 1
            counts[verdict.status] += 1
    for splits in out.values():
        for counts in splits.values():
            checked = counts["items"] - counts["unchecked"]
            counts["contaminated_share"] = round(counts["contaminated"] / checked, 4) if checked else 0.0
    return out


def _counts(subjects: bool = True) -> dict:
    counts = {"items": 0, "clean": 0, "partial": 0, "contaminated": 0, "unchecked": 0}
    return {**counts, "subjects": {}} if subjects else counts


def _touched(item: EvalItem, verdict: Verdict, docs: dict[int, dict]) -> dict:
    return {"benchmark": item.benchmark, "split": item.split, "subject": item.subject, "where": item.where,
            "key": item.key, "status": verdict.status, "coverage": verdict.coverage,
            "question": item.fields[0][:120], "found_in_documents": len(verdict.documents),
            "documents": [docs[d] for d in verdict.documents[:DOCUMENTS_PER_ITEM]]}


def item_statuses(report_path: str | Path, benchmark: str, split: str) -> dict[str, str]:
    """{item key: partial | contaminated} of one benchmark split from a report (absent keys are clean);
    a report that did not check that split is refused, so a missing check never reads as "clean"."""
    import json

    path = Path(report_path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        checked = report["results"].get(benchmark, {})
        items = report["items"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--contamination {path}: not a report of `python -m evaluation contamination` ({exc})") from None
    if split not in checked:
        raise UserError(f"--contamination {path}: {benchmark} {split} was not checked (checked: "
                        f"{sorted(f'{b} {s}' for b, splits in report['results'].items() for s in splits)}); "
                        f"run `python -m evaluation contamination ... --benchmark {benchmark}=DIR` again")
    return {it["key"]: it["status"] for it in items if it["benchmark"] == benchmark and it["split"] == split}


def set_statuses(report: str, sets: list[tuple[str, str]], kind: str) -> dict[str, dict[str, str]]:
    """Set name -> {item key: partial | contaminated} (absent: clean) for the ``--reading`` or ``--math`` sets
    of ``evaluation reading``/``math``; a set the report did not check, or checked in another file, is refused
    (a missing check must never read as clean)."""
    import json

    try:
        data = json.loads(Path(report).read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--contamination {report}: not a report of `python -m evaluation contamination` ({e})") from None
    out, problems = {}, []
    for name, path in sets:
        if kind not in data.get(name, {}):
            problems.append(f"--contamination {report}: set {name} was not checked (checked: {sorted(data)}); run "
                            f"`python -m evaluation contamination MANIFEST --{kind} {name}={path} ...`")
        elif sha256_file(path) not in data[name]["sha256"].values():
            problems.append(f"--contamination {report}: set {name} was checked in another file than {path}")
        else:
            out[name] = item_statuses(report, name, "all")
    raise_if_problems(f"{kind} contamination", problems)
    return out


def summary_table(results: dict) -> str:
    lines = ["| benchmark | split | items | contaminated | partial | clean | unchecked | contaminated share |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for bench, splits in results.items():
        for split, c in splits.items():
            lines.append(f"| {bench} | {split} | {c['items']} | {c['contaminated']} | {c['partial']} | {c['clean']} "
                         f"| {c['unchecked']} | {c['contaminated_share']:.2%} |")
    return "\n".join(lines)
