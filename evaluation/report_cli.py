"""Rebuild a run's forgetting report (report.md, forgetting.png) from its metrics.jsonl and eval_base.json.

    python -m evaluation report --run OUTPUT_DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zhllama.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a training output_dir")


def run(args: argparse.Namespace) -> int:
    from .forgetting import write_report

    out = Path(args.run)
    if not (out / "metrics.jsonl").is_file():
        raise UserError(f"--run {out}: no metrics.jsonl (not a training output_dir)")
    base_path, report_path = out / "eval_base.json", out / "train_report.json"
    base = json.loads(base_path.read_text(encoding="utf-8")) if base_path.is_file() else None
    trips = json.loads(report_path.read_text(encoding="utf-8")).get("guard_trips", []) if report_path.is_file() else []
    table = write_report(out, base, trips)
    print(f"{len(table)} metrics -> {out / 'report.md'}")
    return 0
