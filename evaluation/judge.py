"""LLM-as-judge over `sft generate` answers: a 1-10 grade per answer, or one model against another.

Grading suits tracking one model over time; comparing suits "did this stage help?" (after SFT vs
before, LoRA vs full), and is what judges do most reliably. Judges prefer a position, so each pair
is asked twice, the answers swapped: an answer wins only when it wins in both orders, and loses only
when it loses in both; anything else is a tie (MT-Bench's rule). How often the two orders agree is
reported: a low rate means the judge is guessing.

Reported per BELLE class and overall: the mean grade with a 95% interval, or wins / ties / losses
and the win rate (a tie counts half) with a 95% interval, plus every item's verdicts and replies.
Beside position consistency, how often the longer answer won among decided pairs: judges also
favour length, and a value near 1.0 says the win rate may be measuring it.
A reply without a readable verdict is counted as unparsed and left out of the means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhllama.errors import UserError, raise_if_problems
from zhllama.files import json_line_objects
from zhllama.judge_prompts import TIE, compare_messages, grade_messages, read_grade, read_verdict, task_class

MAX_REPORTED = 20


@dataclass(frozen=True)
class Answer:
    where: str  # file:line
    id: str
    task: str
    question: str
    context: str
    reference: str | None
    prediction: str
    history: tuple[tuple[str, str], ...] = ()  # earlier [user, assistant] turns of a conversation
    system: str | None = None


def read_answers(path: str | Path) -> list[Answer]:
    """The rows of an `sft generate` JSONL (question, prediction; id, class, input, std_answer optional)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (write it with python -m sft generate)")
    answers, problems = [], []
    for number, row in json_line_objects(path.read_text(encoding="utf-8"), problems, lambda n: f"{path}:{n}"):
        where = f"{path}:{number}"
        bad = [k for k in ("question", "prediction") if not isinstance(row.get(k), str)]
        bad += [k for k in ("input", "std_answer", "class", "system") if row.get(k) is not None and not isinstance(row[k], str)]
        history = row.get("history") or []
        if not (isinstance(history, list) and all(isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
                                                  for t in history)):
            bad.append("history (a list of [user, assistant] pairs)")
        if bad:
            problems.append(f"{where}: expected text in {', '.join(bad)}")
            continue
        answers.append(Answer(where, str(row.get("id", number)), task_class(row.get("class")), row["question"],
                              row.get("input") or "", row.get("std_answer") or None, row["prediction"],
                              tuple(tuple(t) for t in history), row.get("system")))
    if not answers and not problems:
        problems.append(f"{path}: no answers")
    raise_if_problems(f"{path}", problems, limit=MAX_REPORTED)
    return answers


def pair_answers(ours: list[Answer], theirs: list[Answer], only_ours: bool = False) -> list[tuple[Answer, Answer]]:
    """The two files' answers to the same questions, matched by id; every mismatch is reported.
    ``only_ours``: ``ours`` is a part of its file (--limit), so answers only in ``theirs`` are fine."""
    problems = [f"{a.where}: id {a.id!r} again (first at {first.where})" for answers in (ours, theirs)
                for a, first in _repeated(answers)]
    by_id = {a.id: a for a in theirs}
    problems += [f"{a.where}: id {a.id!r} is not in the other file" for a in ours if a.id not in by_id]
    ids = {a.id for a in ours}
    problems += [] if only_ours else [f"{b.where}: id {b.id!r} is not in the first file" for b in theirs if b.id not in ids]
    problems += [f"{a.where} and {by_id[a.id].where}: id {a.id!r} has two different questions" for a in ours
                 if a.id in by_id and _prompt(a) != _prompt(by_id[a.id])]
    raise_if_problems("the two answer files do not answer the same questions", problems, limit=MAX_REPORTED)
    return [(a, by_id[a.id]) for a in ours]


def _prompt(a: Answer) -> tuple:
    return a.question, a.context, a.history, a.system


def _repeated(answers: list[Answer]) -> list[tuple[Answer, Answer]]:
    first: dict[str, Answer] = {}
    return [(a, first[a.id]) for a in answers if first.setdefault(a.id, a) is not a]


def grade_calls(answers: list[Answer], key) -> list[dict[str, Any]]:
    """One call per answer: {"answer", "key", "messages"}; ``key(messages)`` names the call."""
    calls = []
    for a in answers:
        messages = grade_messages(a.task, a.question, a.context, a.reference, a.prediction)
        calls.append({"answer": a, "key": key(messages), "messages": messages})
    return calls


def compare_calls(pairs: list[tuple[Answer, Answer]], key) -> list[dict[str, Any]]:
    """Two calls per pair: ours first, then theirs first."""
    calls = []
    for a, b in pairs:
        first = compare_messages(a.task, a.question, a.context, a.reference, a.prediction, b.prediction)
        swapped = compare_messages(a.task, a.question, a.context, a.reference, b.prediction, a.prediction)
        calls.append({"answer": a, "other": b, "key": key(first), "swapped_key": key(swapped),
                      "messages": first, "swapped_messages": swapped,
                      "lengths": [len(a.prediction), len(b.prediction)]})
    return calls


def _interval(values: list[float]) -> list[float] | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = 1.96 * sd / math.sqrt(len(values))
    return [round(mean - half, 4), round(mean + half, 4)]


def grade_report(calls: list[dict[str, Any]], replies: dict[str, str]) -> dict[str, Any]:
    items = [{"where": c["answer"].where, "id": c["answer"].id, "class": c["answer"].task,
              "score": read_grade(replies[c["key"]]), "reply": replies[c["key"]]} for c in calls]

    def summary(rows: list[dict]) -> dict[str, Any]:
        scores = [r["score"] for r in rows if r["score"] is not None]
        return {"items": len(rows), "graded": len(scores), "unparsed": len(rows) - len(scores),
                "mean": round(sum(scores) / len(scores), 4) if scores else None, "ci95": _interval(scores)}
    return {"mode": "grade", "overall": summary(items), "by_class": _by_class(items, summary), "items": items}


# (verdict with ours first, verdict with theirs first) -> outcome for ours
def _outcome(first: str | None, swapped: str | None) -> str | None:
    if first is None or swapped is None:
        return None
    ours = {"A": "win", "B": "loss", TIE: "tie"}[first]
    mirrored = {"B": "win", "A": "loss", TIE: "tie"}[swapped]
    return ours if ours == mirrored else "tie"


def compare_report(calls: list[dict[str, Any]], replies: dict[str, str]) -> dict[str, Any]:
    items = []
    for c in calls:
        first, swapped = read_verdict(replies[c["key"]]), read_verdict(replies[c["swapped_key"]])
        items.append({"where": c["answer"].where, "id": c["answer"].id, "class": c["answer"].task,
                      "outcome": _outcome(first, swapped), "verdicts": [first, swapped],
                      "consistent": None if None in (first, swapped) else {"A": "B", "B": "A", TIE: TIE}[first] == swapped,
                      "lengths": c["lengths"], "replies": [replies[c["key"]], replies[c["swapped_key"]]]})

    def summary(rows: list[dict]) -> dict[str, Any]:
        judged = [r for r in rows if r["outcome"] is not None]
        counts = {k: sum(r["outcome"] == k for r in judged) for k in ("win", "tie", "loss")}
        points = [{"win": 1.0, "tie": 0.5, "loss": 0.0}[r["outcome"]] for r in judged]
        return {"items": len(rows), **counts, "unparsed": len(rows) - len(judged),
                "win_rate": round(sum(points) / len(points), 4) if points else None, "ci95": _interval(points),
                "position_consistency": round(sum(bool(r["consistent"]) for r in judged) / len(judged), 4)
                if judged else None, "longer_won": _longer_won(judged)}
    return {"mode": "compare", "overall": summary(items), "by_class": _by_class(items, summary), "items": items}


def _context(answer: Any) -> dict[str, Any]:
    """The question of an answer as an SFT record's prompt fields (with its conversation, as generated)."""
    record: dict[str, Any] = {"id": answer.id, "class": answer.task, "instruction": answer.question}
    if answer.context:
        record["input"] = answer.context
    if answer.history:
        record["history"] = [list(turn) for turn in answer.history]
    if answer.system is not None:
        record["system"] = answer.system
    return record


def kto_examples(calls: list[dict[str, Any]], report: dict[str, Any], judge_model: str,
                 threshold: int) -> list[dict[str, Any]]:
    """The graded answers as KTO examples (sft/kto.py reads them): desirable when the grade is at least
    ``threshold``. An unreadable grade gives none."""
    examples = []
    for call, item in zip(calls, report["items"]):
        if item["score"] is None:
            continue
        examples.append({**_context(call["answer"]), "output": call["answer"].prediction,
                         "kto_tag": item["score"] >= threshold, "score": item["score"], "judge": judge_model})
    return examples


def preference_pairs(calls: list[dict[str, Any]], report: dict[str, Any], judge_model: str) -> list[dict[str, Any]]:
    """The compared questions the judge decided in both orders, as DPO pairs (sft/pairs.py reads them):
    the winner's answer is ``chosen``. Ties, unreadable verdicts and order-dependent verdicts (counted as
    ties) give no pair: a preference the judge does not hold both ways is noise to train on."""
    pairs = []
    for call, item in zip(calls, report["items"]):
        if item["outcome"] not in ("win", "loss"):
            continue
        ours, theirs = call["answer"], call["other"]
        chosen, rejected = (ours, theirs) if item["outcome"] == "win" else (theirs, ours)
        pairs.append({**_context(ours), "chosen": chosen.prediction, "rejected": rejected.prediction,
                      "judge": judge_model})
    return pairs


def _longer_won(judged: list[dict]) -> float | None:
    """Among wins and losses between answers of different length, the share the longer answer won.
    Near 1.0 with answers that are merely longer is the length bias judges are known for."""
    decided = [r for r in judged if r["outcome"] in ("win", "loss") and r["lengths"][0] != r["lengths"][1]]
    if not decided:
        return None
    longer = sum((r["outcome"] == "win") == (r["lengths"][0] > r["lengths"][1]) for r in decided)
    return round(longer / len(decided), 4)


def _by_class(items: list[dict], summary) -> dict[str, Any]:
    classes = sorted({r["class"] for r in items})
    return {name: summary([r for r in items if r["class"] == name]) for name in classes}


def markdown_table(report: dict[str, Any]) -> str:
    rows = [("all", report["overall"])] + list(report["by_class"].items())
    if report["mode"] == "grade":
        lines = ["| class | items | mean grade (1-10) | 95% interval | unparsed |", "|---|---:|---:|---|---:|"]
        lines += [f"| {name} | {s['items']} | {_fmt(s['mean'])} | {_fmt_ci(s['ci95'])} | {s['unparsed']} |"
                  for name, s in rows]
    else:
        lines = ["| class | items | win | tie | loss | win rate | 95% interval | same in both orders | longer won "
                 "| unparsed |", "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        lines += [f"| {name} | {s['items']} | {s['win']} | {s['tie']} | {s['loss']} | {_fmt(s['win_rate'])} | "
                  f"{_fmt_ci(s['ci95'])} | {_fmt(s['position_consistency'])} | {_fmt(s['longer_won'])} | "
                  f"{s['unparsed']} |" for name, s in rows]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _fmt_ci(ci: list[float] | None) -> str:
    return "—" if ci is None else f"{ci[0]:.3f} – {ci[1]:.3f}"
