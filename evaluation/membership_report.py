"""From each text's membership scores to what they show per group: how well each method separates
known members from known non-members (AUC, true positives at 5% false positives), and the share of a
benchmark's items above the threshold calibrated on the run's own training and held-out documents.

    result = summarise(texts, scored, methods)     # texts: membership_data.MembershipText; scored: TextScore | None
    print(table(result))
"""
from __future__ import annotations

from .membership import separation

CALIBRATION = "calibration"
SUSPECTS = 10  # the highest-scoring texts of each group, for a person to read


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _scores(scored: list, indices: list[int], method: str) -> list[float]:
    return [scored[i].scores[method] for i in indices]


def _group(texts: list, scored: list, indices: list[int], methods: tuple[str, ...], thresholds: dict | None) -> dict:
    fitted = [i for i in indices if scored[i] is not None]
    entry: dict = {"texts": len(indices), "scored": len(fitted), "too_long": len(indices) - len(fitted),
                   "mean": {m: _mean(_scores(scored, fitted, m)) for m in methods}}
    members = [i for i in fitted if texts[i].label is True]
    nonmembers = [i for i in fitted if texts[i].label is False]
    if members and nonmembers:
        entry["members"], entry["nonmembers"] = len(members), len(nonmembers)
        entry["separation"] = {m: {k: v if k == "threshold" else round(v, 6) for k, v in separation(
            _scores(scored, members, m), _scores(scored, nonmembers, m)).items()} for m in methods}
    statuses = sorted({texts[i].status for i in fitted if texts[i].status is not None})
    if statuses:
        entry["by_status"] = {s: {"texts": sum(texts[i].status == s for i in fitted),
                                  "mean": {m: _mean(_scores(scored, [i for i in fitted if texts[i].status == s], m))
                                           for m in methods}} for s in statuses}
    if thresholds is not None and fitted:
        entry["flagged"] = {m: round(sum(t is None or scored[i].scores[m] > t for i in fitted) / len(fitted), 6)
                            for m, t in thresholds.items()}
    lead = "reference" if "reference" in methods else "min_k_plus_plus"
    top = sorted(fitted, key=lambda i: -scored[i].scores[lead])[:SUSPECTS]
    entry["highest"] = {"method": lead, "texts": [{"where": texts[i].where, "score": round(scored[i].scores[lead], 6),
                                                   "text": texts[i].text[:80]} for i in top]}
    entry["items"] = [_item(texts[i], scored[i]) for i in indices]
    return entry


def _item(text, score) -> dict:
    out = {"where": text.where, "key": text.key, "label": text.label, "status": text.status}
    if score is None:
        return {**out, "too_long": True}
    return {**out, "tokens": score.tokens, "characters": score.characters,
            "bits_per_char": round(score.bits_per_char, 6), "scores": {m: round(v, 6) for m, v in score.scores.items()}}


def summarise(texts: list, scored: list, methods: tuple[str, ...]) -> dict:
    """{group: summary}; the calibration group first, its thresholds applied to every other group."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(t.group, []).append(i)
    out: dict[str, dict] = {}
    thresholds = None
    if CALIBRATION in groups:
        out[CALIBRATION] = _group(texts, scored, groups.pop(CALIBRATION), methods, None)
        if "separation" not in out[CALIBRATION]:
            raise ValueError("the calibration documents did not fit the model (lower --max-chars)")
        thresholds = {m: v["threshold"] for m, v in out[CALIBRATION]["separation"].items()}
    for group, indices in groups.items():
        out[group] = _group(texts, scored, indices, methods, thresholds)
    return out


def table(groups: dict) -> str:
    """A row per group and method: mean score, AUC and TPR at 5% FPR where labels exist, share flagged."""
    lines = ["| texts | method | mean score | AUC | TPR at 5% FPR | flagged at the calibrated threshold |",
             "|---|---|---:|---:|---:|---:|"]
    for group, g in groups.items():
        label = f"{group} ({g['scored']}" + (f", {g['members']} in / {g['nonmembers']} out" if "members" in g else "") + ")"
        for method, mean in g["mean"].items():
            sep = g.get("separation", {}).get(method)
            flagged = g.get("flagged", {}).get(method)
            lines.append(f"| {label} | {method} | {_fmt(mean)} | {_fmt(sep and sep['auc'], 3)} "
                         f"| {_percent(sep and sep['tpr_at_5_fpr'])} | {_percent(flagged)} |")
            label = ""
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "—" if value is None else f"{value:.1%}"
