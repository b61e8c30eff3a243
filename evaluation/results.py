"""From per-item log-probabilities to accuracy per subject, per category and overall, and a table."""
from __future__ import annotations

from typing import Any

from .benchmarks import LETTERS, Benchmark
from .subjects import CHINA_SPECIFIC, HUMANITIES, OTHER, SOCIAL, STEM, categories_of


def predictions(bench: Benchmark, logprobs: list[list[float]]) -> list[dict[str, Any]]:
    out = []
    for item, lps in zip(bench.items, logprobs):
        pred = LETTERS[max(range(4), key=lambda j: (lps[j], -j))]  # ties: the earlier letter
        out.append({"subject": item.subject, "where": item.where, "key": item.key, "answer": item.answer, "pred": pred,
                    "correct": pred == item.answer, "logprobs": [round(v, 6) for v in lps]})
    return out


def _acc(rows: list[dict]) -> dict[str, Any]:
    correct = sum(r["correct"] for r in rows)
    return {"accuracy": correct / len(rows), "correct": correct, "items": len(rows)}


def aggregate(bench: Benchmark, preds: list[dict[str, Any]]) -> dict[str, Any]:
    """``accuracy`` over all items, ``macro_accuracy`` = mean of subjects, and per category (each
    benchmark's own: C-Eval adds "Hard", CMMLU "China specific")."""
    by_subject: dict[str, list[dict]] = {}
    for row in preds:
        by_subject.setdefault(row["subject"], []).append(row)
    subjects = {s: _acc(rows) for s, rows in by_subject.items()}
    out: dict[str, Any] = {**_acc(preds), "macro_accuracy": sum(v["accuracy"] for v in subjects.values()) / len(subjects)}
    cats: dict[str, list[dict]] = {}
    for row in preds:
        for cat in categories_of(bench.name, row["subject"]):
            cats.setdefault(cat, []).append(row)
    if cats:
        order = [STEM, SOCIAL, HUMANITIES, OTHER, CHINA_SPECIFIC, "Hard"]
        out["categories"] = {c: _acc(cats[c]) for c in order if c in cats}
    out["subjects"] = dict(sorted(subjects.items()))
    return out


def by_contamination(preds: list[dict[str, Any]], statuses: dict[str, str]) -> dict[str, Any]:
    """Accuracy on the clean, partial and contaminated items apart (LLaMA-2's clean/dirty split): a gain
    that only the contaminated items show is memory, not skill. Marks each prediction's status."""
    groups: dict[str, list[dict]] = {}
    for row in preds:
        row["contamination"] = statuses.get(row["key"], "clean")
        groups.setdefault(row["contamination"], []).append(row)
    return {status: _acc(groups[status]) for status in ("clean", "partial", "contaminated") if status in groups}


def metrics_of(name: str, summary: dict[str, Any]) -> dict[str, float]:
    """Flat metrics for the logs: ``bench/<name>/accuracy`` and one per category."""
    out = {f"bench/{name}/accuracy": summary["accuracy"]}
    for cat, value in summary.get("categories", {}).items():
        out[f"bench/{name}/{cat.lower().replace(' ', '_')}"] = value["accuracy"]
    for status in ("clean", "contaminated"):  # with a contamination report (by_contamination)
        if status in summary.get("contamination", {}):
            out[f"bench/{name}/{status}_accuracy"] = summary["contamination"][status]["accuracy"]
    return out


def table(summary: dict[str, Any]) -> str:
    lines = ["| group | accuracy | items |", "|---|---:|---:|",
             f"| **all** | {summary['accuracy']:.4f} | {summary['items']} |",
             f"| mean of subjects | {summary['macro_accuracy']:.4f} | {len(summary['subjects'])} subjects |"]
    lines += [f"| {c} (category) | {v['accuracy']:.4f} | {v['items']} |" for c, v in summary.get("categories", {}).items()]
    lines += [f"| {g} items (contamination report) | {v['accuracy']:.4f} | {v['items']} |"
              for g, v in summary.get("contamination", {}).items()]
    lines += [f"| {s} | {v['accuracy']:.4f} | {v['items']} |" for s, v in summary["subjects"].items()]
    return "\n".join(lines)
