"""Reading results side by side: this model against another on the same questions, and the table printed."""
from __future__ import annotations

# settings that change the questions asked or how they are scored: a comparison needs them equal
SAME_SETTINGS = ("shots", "shots_from", "chat", "max_questions", "seed", "metric", "max_new_tokens", "haystack_tokens",
                 "depths", "t2s")


def compare_results(old: dict, new: dict, where: str) -> dict:
    """Per set in both: the old and new EM/F1, the change, and the questions gained and lost (exact
    match now and not before, and the reverse). Refused when the questions or settings differ."""
    from .generated_runs import comparable_sets

    shared = comparable_sets(old, new, where, SAME_SETTINGS, "questions")
    out = {"results": where, "model": old.get("model"), "sets": {}}
    for name in shared:
        before, after = old["sets"][name], new["sets"][name]
        pairs = list(zip(before["items"], after["items"]))
        out["sets"][name] = {
            "em": [before["em"], after["em"]], "f1": [before["f1"], after["f1"]],
            "em_change": round(after["em"] - before["em"], 3), "f1_change": round(after["f1"] - before["f1"], 3),
            "gained": [b["key"] for b, a in pairs if a["exact"] and not b["exact"]],
            "lost": [b["key"] for b, a in pairs if b["exact"] and not a["exact"]],
        }
    return out


def table(result: dict) -> str:
    lines = ["| set | metric | questions | EM | F1 | too long | empty | answer in the passage "
             "| reference: bits/char | reference: greedy |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["sets"].items():
        inside = "–" if s["in_context"] is None else f"{100 * s['in_context']:.1f}%"
        lines.append(f"| {name} | {s['metric']} | {s['questions']} | {s['em']:.2f} | {s['f1']:.2f} | {s['too_long']} "
                     f"| {s['empty']} | {inside} | {_num(s, 'answer_bits_per_char', 4)} | {_num(s, 'greedy_answer', 2)} |")
    for name, s in result["sets"].items():
        if "contamination" in s:
            lines += ["", f"{name}, by whether the passage is in the training corpus (--contamination):", "",
                      "| passages | questions | EM | F1 | reference: bits/char | reference: greedy |",
                      "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {status} | {v['questions']} | {v['em']:.2f} | {v['f1']:.2f} | {_num(v, 'answer_bits_per_char', 4)} "
                      f"| {_num(v, 'greedy_answer', 2)} |" for status, v in s["contamination"].items()]
        if "by_depth" in s:
            lines += ["", f"{name}, by depth of the question's paragraph (0 = first):", "",
                      "| depth | questions | EM | F1 | too long |", "|---:|---:|---:|---:|---:|"]
            lines += [f"| {d} | {v['questions']} | {v['em']:.2f} | {v['f1']:.2f} | {v['too_long']} |"
                      for d, v in s["by_depth"].items()]
    compare = result.get("compare")
    if compare:
        lines += ["", f"against {compare['model']} ({compare['results']}):", "",
                  "| set | EM before | EM now | change | F1 before | F1 now | change | gained | lost |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, c in compare["sets"].items():
            lines.append(f"| {name} | {c['em'][0]:.2f} | {c['em'][1]:.2f} | {c['em_change']:+.2f} | {c['f1'][0]:.2f} "
                         f"| {c['f1'][1]:.2f} | {c['f1_change']:+.2f} | {len(c['gained'])} | {len(c['lost'])} |")
    return "\n".join(lines)


def _num(row: dict, key: str, digits: int) -> str:
    return "–" if row.get(key) is None else f"{row[key]:.{digits}f}"
