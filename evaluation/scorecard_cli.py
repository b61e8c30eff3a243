"""Models side by side over every evaluation you ran on them: what each gained and what it forgot.

    python -m evaluation scorecard --model base=runs/base --model zh-pt=runs/zh-pt --model sft=runs/sft \
        [--out runs/scorecard.md]

Each ``--model NAME=PATH`` is a results file or a folder of them (its ``*.json``; the same NAME may
be given again for more). Recognised: ``evaluation base``, ``choice``, ``reading``, ``long-context``,
``membership`` (each group's share of items above the calibrated threshold), ``judge`` (grades) and ``sft
generate``'s ``*.scores.json``; other JSON in a folder is listed and skipped. Changes are from the first
model: ▲ better, ▼ worse (bits per character, loss and membership's flagged share: lower is better). A value measured with other data or settings than the first model's (another shot count,
split, file ...) is shown as not comparable, with the difference. Writes the table (``--out``) and
the same as JSON beside it (``.json``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a results file or folder; the first model is the reference (repeatable)")
    parser.add_argument("--out", default=None, help="the table as Markdown (and OUT.json)")


def _files(path: Path, problems: list[str], skipped: list[str]) -> list[tuple[Path, dict, object]]:
    from .scorecard import kind_of

    out = []
    for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{file}: not readable as JSON ({e.__class__.__name__})")
            continue
        kind = kind_of(doc)
        if kind is None:
            (skipped if path.is_dir() else problems).append(f"{file}: not the results of an evaluation command")
        else:
            out.append((file, doc, kind))
    return out


def collect(pairs: list[tuple[str, str]]) -> tuple[dict, list[str]]:
    """NAME -> metric -> Value, every problem of every file raised at once; and the skipped files."""
    from .scorecard import Value

    models: dict[str, dict] = {}
    problems: list[str] = []
    skipped: list[str] = []
    for name, where in pairs:
        path = Path(where)
        if not path.exists():
            problems.append(f"--model {name}={where}: no such file or folder")
            continue
        values = models.setdefault(name, {})
        found = _files(path, problems, skipped)
        if path.is_dir() and not found:
            problems.append(f"--model {name}={where}: no results file in the folder")
        for file, doc, (kind, flatten) in found:
            try:
                flat = flatten(doc)
            except (KeyError, TypeError, AttributeError) as e:
                problems.append(f"{file}: looks like {kind} results but lacks {e}")
                continue
            for metric, (value, settings) in flat.items():
                old = values.get(metric)
                if old is not None and (old.value, old.settings) != (value, settings):
                    problems.append(f"--model {name}: {metric} given by {old.source} and {file} with other values")
                values[metric] = Value(float(value), settings, str(file))
    raise_if_problems("scorecard inputs", problems)
    return models, skipped


def run(args: argparse.Namespace) -> int:
    from zhllama.files import write_json_atomic, write_text_atomic

    from .base_cli import name_pairs
    from .scorecard import markdown, side_by_side

    problems: list[str] = []
    pairs = name_pairs(args.model, "--model", problems)
    if len({n for n, _ in pairs}) < 2 and not problems:
        problems.append("--model NAME=PATH: at least two models to set side by side")
    raise_if_problems("scorecard settings", problems)
    models, skipped = collect(pairs)
    if not any(models.values()):
        raise UserError("scorecard: no metric in any results file")
    for note in skipped:
        print(f"skipped {note}")
    card = side_by_side(models)
    text = markdown(card)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
        write_json_atomic(str(args.out) + ".json", card)
        print(f"-> {args.out}, {args.out}.json")
    return 0
