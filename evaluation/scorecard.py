"""Every evaluation's results as flat metrics, and models side by side: what each gained and forgot.

A results file is recognised by its shape: ``evaluation base`` (bits per character, benchmarks),
``evaluation choice``, ``evaluation reading``, ``evaluation math``, ``evaluation code`` (pass@k),
``evaluation long-context``, ``evaluation membership`` (calibrated flagged shares), ``evaluation judge`` (grades)
and ``sft generate``'s ``*.scores.json``. Each metric keeps the settings that make two
values comparable (data checksum, shots, split ...): a value measured otherwise than the first
model's is marked, never silently compared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

GROUPS = ("eval/", "bench/", "reading/", "math/", "code/", "long/", "passkey/", "membership/", "judge/", "answers/")
MEMBERSHIP_SCORES = ("min_k_plus_plus", "reference")  # the strongest without and with a reference model


@dataclass(frozen=True)
class Value:
    value: float
    settings: tuple  # (name, value) pairs that must match for a fair comparison
    source: str  # the results file


def better(metric: str) -> str:
    # membership: the share of a benchmark's items that look trained on
    lower = metric.startswith(("eval/", "long/", "membership/")) or metric.endswith(("/answer_bits_per_char",
                                                                                     "/solution_bits_per_char"))
    return "lower" if lower else "higher"


def _settings(**kwargs: Any) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


def _base(doc: dict) -> dict[str, tuple]:
    out = {}
    for metric, value in doc["metrics"].items():
        parts = metric.split("/")
        if metric.startswith("eval/"):
            name = parts[1] if len(parts) == 3 else "eval"
            settings = _settings(manifest=doc.get("sets", {}).get(name), block_size=doc.get("block_size"))
        elif metric.startswith("reading/"):
            r = doc.get("reading", {}).get(parts[1], {})
            settings = _reference_settings(r.get("sha256"), r.get("shots"), r.get("questions"), r.get("seed"))
        elif metric.startswith("math/"):
            m = doc.get("math", {}).get(parts[1], {})
            settings = _math_reference_settings(m.get("sha256"), m.get("shots"), m.get("shots_from"), m.get("problems"),
                                                m.get("seed"), False, m.get("max_new_tokens"))
        elif metric.startswith("code/"):
            c = doc.get("code", {}).get(parts[1], {})
            settings = _settings(sha256=c.get("sha256"), tasks=c.get("tasks"), room=c.get("max_new_tokens"))
        else:  # the same settings as `evaluation choice` records: one benchmark from either command
            settings = _settings(data=doc.get("benchmarks", {}).get(parts[1]), shots=doc.get("shots"),
                                 split="test" if parts[1] == "cmmlu" else "val",
                                 items_per_subject=doc.get("max_items_per_subject"))
        out[metric] = (value, settings)
    return out


def _choice(doc: dict) -> dict[str, tuple]:
    from .results import metrics_of

    settings = _settings(data=doc.get("data"), shots=doc["shots"], split=doc["split"],
                         items_per_subject=doc.get("max_items_per_subject"))
    return {k: (v, settings) for k, v in metrics_of(doc["benchmark"], doc).items()}


def _reference_settings(sha256, shots, questions, seed, chat=False, haystack_tokens=None, depths=None) -> tuple:
    """What the reference answers' numbers depend on (``questions``: how many were asked): the same from
    `evaluation base --reading` (and the run's eval.reading) and from `evaluation reading`, so either
    compares with the other."""
    return _settings(sha256=sha256, shots=shots, questions=questions, seed=seed, chat=bool(chat),
                     haystack=(haystack_tokens, depths) if haystack_tokens else None)


def _math_reference_settings(sha256, shots, shots_from, problems, seed, chat, max_new_tokens) -> tuple:
    """What a math set's reference numbers depend on: the same from `evaluation base --math` and `evaluation math`."""
    return _settings(sha256=sha256, shots=shots, shots_from=shots_from, problems=problems, seed=seed, chat=bool(chat),
                     room=max_new_tokens)


def _reading(doc: dict) -> dict[str, tuple]:
    from .reading_compare import SAME_SETTINGS

    out = {}
    run = doc["settings"]
    for name, s in doc["sets"].items():
        settings = _settings(sha256=s["sha256"], **{k: run.get(k) for k in SAME_SETTINGS})
        out[f"reading/{name}/em"] = (s["em"], settings)
        out[f"reading/{name}/f1"] = (s["f1"], settings)
        reference = _reference_settings(s["sha256"], run.get("shots"), s["questions"], run.get("seed"),
                                        run.get("chat"), run.get("haystack_tokens"), run.get("depths"))
        for key in ("answer_bits_per_char", "greedy_answer"):
            if s.get(key) is not None:
                out[f"reading/{name}/{key}"] = (s[key], reference)
        for depth, d in s.get("by_depth", {}).items():
            out[f"reading/{name}/f1@depth{depth}"] = (d["f1"], settings)
        for status in ("clean", "contaminated"):  # with a contamination report
            if status in s.get("contamination", {}):
                out[f"reading/{name}/{status}_f1"] = (s["contamination"][status]["f1"], settings)
    return out


def _math(doc: dict) -> dict[str, tuple]:
    from .math_eval import SAME_SETTINGS

    out = {}
    for name, s in doc["sets"].items():
        settings = _settings(sha256=s["sha256"], **{k: doc["settings"].get(k) for k in SAME_SETTINGS})
        for key in ("accuracy", "maj", "pass"):
            if s.get(key) is not None:
                out[f"math/{name}/{key}"] = (s[key], settings)
        run = doc["settings"]
        reference = _math_reference_settings(s["sha256"], run.get("shots"), run.get("shots_from"), s["problems"],
                                             run.get("seed"), run.get("chat"), run.get("max_new_tokens"))
        for key in ("solution_bits_per_char", "answer_greedy"):  # read without generating: as eval.math logs them
            if s.get(key) is not None:
                out[f"math/{name}/{key}"] = (s[key], reference)
        for category, c in s.get("by_category", {}).items():
            out[f"math/{name}/{category}/accuracy"] = (c["accuracy"], settings)
    return out


def _code(doc: dict) -> dict[str, tuple]:
    from .code_eval import KS, SAME_SETTINGS

    out = {}
    for name, s in doc["sets"].items():
        settings = _settings(sha256=s["sha256"], **{k: doc["settings"].get(k) for k in SAME_SETTINGS})
        out.update({f"code/{name}/pass@{k}": (s[f"pass@{k}"], settings) for k in KS if s.get(f"pass@{k}") is not None})
        if s.get("solution_bits_per_char") is not None:  # read, not generated: as `evaluation base --code` and eval.code
            reference = _settings(sha256=s["sha256"], tasks=s["tasks"], room=doc["settings"].get("max_new_tokens"))
            out[f"code/{name}/solution_bits_per_char"] = (s["solution_bits_per_char"], reference)
    return out


def _long_context(doc: dict) -> dict[str, tuple]:
    keep = ("windows", "whole_documents", "depths", "trials", "digits", "language", "chat", "seed")
    settings = _settings(rope_scaling=doc.get("rope_scaling"), **{k: doc["settings"].get(k) for k in keep})
    out = {}
    for name, got in doc.get("loss", {}).items():
        for length, row in got["by_length"].items():
            out[f"long/{name}/loss@{length}"] = (row["loss"], settings)
    for length, row in doc.get("passkey", {}).get("by_length_and_depth", {}).items():
        out[f"passkey/found@{length}"] = (row["all"], settings)
    return out


def _judge(doc: dict) -> dict[str, tuple]:
    made = doc.get("made_by", {})
    settings = _settings(judge=made.get("judge", {}).get("model"), prompts=made.get("prompts_sha256"),
                         limit=made.get("limit"))
    out = {"judge/all/grade": (doc["overall"]["mean"], settings)}
    out.update({f"judge/{c}/grade": (v["mean"], settings) for c, v in doc.get("by_class", {}).items()})
    return {k: v for k, v in out.items() if v[0] is not None}


def _answers(doc: dict) -> dict[str, tuple]:
    settings = _settings(input=doc.get("input"), records=doc.get("records"), sampling=doc.get("sampling"))
    return {f"answers/{c}/rouge_l": (v["rouge_l_f1_char"], settings) for c, v in doc["by_class"].items()}


def _membership(doc: dict) -> dict[str, tuple]:
    """Each group's share of items above the calibrated 5% threshold (``membership/ceval/val/flagged_...``)."""
    calibration = doc.get("calibration") or {}
    out = {}
    for group, g in doc["groups"].items():
        for score in MEMBERSHIP_SCORES:
            if score in g.get("flagged", {}):
                run = {k: doc["settings"].get(k) for k in ("k", "max_chars", "max_items", "seed", "calibrate_docs")}
                settings = _settings(calibration=calibration.get("fingerprint") or calibration.get("sha256"),
                                     data=doc.get("data", {}).get(group.split(" ")[0]), **run,
                                     **({"reference": doc.get("reference_fingerprint")} if score == "reference" else {}))
                out[f"membership/{group.replace(' ', '/')}/flagged_{score}"] = (g["flagged"][score], settings)
    return out


# (what it is, test of the shape, flattener)
KINDS: list[tuple[str, Callable[[dict], bool], Callable[[dict], dict]]] = [
    ("evaluation base", lambda d: isinstance(d.get("metrics"), dict) and "source" in d, _base),
    ("evaluation choice", lambda d: {"benchmark", "split", "shots", "accuracy"} <= d.keys(), _choice),
    ("evaluation math", lambda d: d.get("task") == "math" and isinstance(d.get("sets"), dict), _math),
    ("evaluation code", lambda d: d.get("task") == "code" and isinstance(d.get("sets"), dict), _code),
    ("evaluation reading", lambda d: isinstance(d.get("sets"), dict) and "max_length" in d, _reading),
    ("evaluation long-context", lambda d: "loss" in d and "positions" in d, _long_context),
    ("evaluation membership", lambda d: isinstance(d.get("groups"), dict) and "calibration" in d, _membership),
    ("evaluation judge (grades)", lambda d: d.get("mode") == "grade", _judge),
    ("sft generate scores", lambda d: str(d.get("metric", "")).startswith("character-level ROUGE-L"), _answers),
]


def kind_of(doc: Any) -> tuple[str, Callable] | None:
    if isinstance(doc, dict):
        for name, test, flatten in KINDS:
            if test(doc):
                return name, flatten
    return None


def order_key(metric: str) -> tuple:
    group = next((i for i, g in enumerate(GROUPS) if metric.startswith(g)), len(GROUPS))
    return group, metric


def side_by_side(models: dict[str, dict[str, Value]]) -> dict[str, Any]:
    """Rows of metric -> per model {value, change from the first model, comparable}; and per later model
    the metrics it gained (better than the first model) and forgot (worse)."""
    names = list(models)
    first = models[names[0]]
    rows = {}
    for metric in sorted({m for values in models.values() for m in values}, key=order_key):
        row = {"better": better(metric), "models": {}}
        for name in names:
            v = models[name].get(metric)
            if v is None:
                continue
            ref = first.get(metric)
            comparable = ref is None or ref.settings == v.settings
            change = v.value - ref.value if ref is not None and name != names[0] and comparable else None
            differs = [] if comparable else [f"{k} {dict(v.settings).get(k)} (first: {dict(ref.settings).get(k)})"
                                             for k in sorted(dict(v.settings).keys() | dict(ref.settings).keys())
                                             if dict(v.settings).get(k) != dict(ref.settings).get(k)]
            row["models"][name] = {"value": v.value, "change": change, "source": v.source, "differs": differs}
        rows[metric] = row
    verdicts = {}
    for name in names[1:]:
        got = {m: r["models"][name]["change"] for m, r in rows.items()
               if name in r["models"] and r["models"][name]["change"] is not None}
        signed = {m: c if rows[m]["better"] == "higher" else -c for m, c in got.items()}
        verdicts[name] = {"compared": len(signed),
                          "gained": sorted((m for m in signed if signed[m] > 0), key=lambda m: -signed[m]),
                          "forgot": sorted((m for m in signed if signed[m] < 0), key=lambda m: signed[m])}
    return {"models": names, "rows": rows, "verdicts": verdicts}


def _cell(cell: dict | None, better_dir: str, notes: dict[str, int]) -> str:
    if cell is None:
        return ""
    text = f"{cell['value']:.4f}"
    if cell["differs"]:
        note = f"{cell['source']}: measured otherwise: " + "; ".join(cell["differs"])
        number = notes.setdefault(note, len(notes) + 1)  # one note per file and difference
        return f"{text} (not comparable [{number}])"
    change = cell["change"]
    if change is None:
        return text
    good = change > 0 if better_dir == "higher" else change < 0
    mark = "=" if change == 0 else ("▲" if good else "▼")
    return f"{text} ({change:+.4f} {mark})"


def markdown(card: dict[str, Any]) -> str:
    names, notes = card["models"], {}
    lines = ["| metric | better | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for metric, row in card["rows"].items():
        cells = [_cell(row["models"].get(n), row["better"], notes) for n in names]
        lines.append(f"| {metric} | {row['better']} | " + " | ".join(cells) + " |")
    lines += ["", f"Changes are from {names[0]}: ▲ better, ▼ worse."]
    for name, v in card["verdicts"].items():
        forgot = ", ".join(v["forgot"][:8]) + (" ..." if len(v["forgot"]) > 8 else "")
        lines.append(f"- **{name}**: of {v['compared']} metrics compared, {len(v['gained'])} better, "
                     f"{len(v['forgot'])} worse"
                     + (f"; worse: {forgot}" if forgot else ""))
    if notes:
        lines += ["", "Not comparable with the first model's value:", *(f"{n}. {note}" for note, n in notes.items())]
    return "\n".join(lines) + "\n"
