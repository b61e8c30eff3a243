"""The forgetting report of a run: per held-out set and benchmark, the base value, the value at every
evaluation and the change, as ``report.md`` + ``forgetting.png`` (and a table for train_report.json).

    python -m evaluation report --run OUTPUT_DIR      # rebuild them from metrics.jsonl + eval_base.json

Watched metrics: ``eval/loss``, ``eval/bits_per_char``, ``eval/<set>/loss``,
``eval/<set>/bits_per_char``, ``reading/<set>/answer_bits_per_char`` (lower is better),
``math/<set>/solution_bits_per_char`` and ``code/<set>/solution_bits_per_char`` (lower), ``bench/<benchmark>/<group>``
accuracies, ``reading/<set>/greedy_answer``
and ``math/<set>/answer_greedy`` (higher is better). The
change is value − base; a guard trip (engine/watch.py) is listed with its step.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from zhllama.files import save_figure_atomic

WATCHED = re.compile(r"^(eval/([^/]+/)?(loss|bits_per_char)|bench/[^/]+/[^/]+|reading/[^/]+/(answer_bits_per_char|greedy_answer)"
                     r"|math/[^/]+/(solution_bits_per_char|answer_greedy)|code/[^/]+/solution_bits_per_char)$")


def read_history(jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] in step order (a step logged twice keeps its last value)."""
    per: dict[str, dict[int, float]] = {}
    if jsonl.is_file():
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            for key, value in rec.items():
                if WATCHED.match(key) and isinstance(value, (int, float)):
                    per.setdefault(key, {})[int(rec.get("step", 0))] = float(value)
    return {k: sorted(v.items()) for k, v in sorted(per.items())}


def forgetting_table(history: dict[str, list[tuple[int, float]]], base: dict[str, float]) -> dict[str, Any]:
    table = {}
    for metric, points in history.items():
        b = base.get(metric)
        table[metric] = {
            "base": b, "better": "higher" if metric.startswith("bench/") or metric.endswith(("/greedy_answer", "/answer_greedy"))
                      else "lower",
            "steps": [{"step": s, "value": v, "change": None if b is None else v - b} for s, v in points],
            "last": points[-1][1], "change": None if b is None else points[-1][1] - b,
        }
    return table


def _fmt(v: float | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")


def markdown(name: str, table: dict[str, Any], base: dict[str, Any] | None, trips: list[dict]) -> str:
    steps = sorted({p["step"] for row in table.values() for p in row["steps"]})
    lines = [f"# Forgetting report: {name}", ""]
    lines.append(f"Base: {base.get('source', '?')}" if base else "Base: none (eval.base=none or not computed)")
    lines += ["", "Change = value at the step − base (bits/char and loss: lower is better; accuracy, greedy answers: higher).", ""]
    lines.append("| metric | base | " + " | ".join(f"step {s}" for s in steps) + " | change (last) |")
    lines.append("|---|---:|" + "---:|" * len(steps) + "---:|")
    for metric, row in table.items():
        at = {p["step"]: p for p in row["steps"]}
        cells = [f"{_fmt(at[s]['value'])} ({_fmt(at[s]['change'], True)})" if s in at else "" for s in steps]
        lines.append(f"| {metric} | {_fmt(row['base'])} | " + " | ".join(cells) + f" | {_fmt(row['change'], True)} |")
    lines += ["", "![change from base](forgetting.png)", "", "## Guard", ""]
    if not trips:
        lines.append("No bound of eval.guard was crossed.")
    for t in trips:
        lines.append(f"- **{t['key'].split('.')[0]}** drifted at step {t['step']}: {t['metric']} = {t['value']:.4f}, "
                     f"base {t['base']:.4f}, allowed change {t['allowed_change']:+g} → {t['action']}")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for metric, row in table.items():
        if row["base"] is None or metric.endswith("/loss"):  # loss duplicates bits/char on another scale
            continue
        pts = [(p["step"], p["change"]) for p in row["steps"]]
        ax.plot(*zip(*pts), "o-", label=metric)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("change from base (bits/char, accuracy)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, png)


def write_report(out_dir: Path, base: dict[str, Any] | None, trips: list[dict]) -> dict[str, Any]:
    """Writes out_dir/report.md and out_dir/forgetting.png; returns the table."""
    table = forgetting_table(read_history(out_dir / "metrics.jsonl"), (base or {}).get("metrics", {}))
    text = markdown(out_dir.name, table, base, trips)
    tmp = out_dir / "report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_dir / "report.md")
    plot(table, out_dir / "forgetting.png")
    return table
