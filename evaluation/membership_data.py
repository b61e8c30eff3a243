"""The texts ``evaluation membership`` scores: benchmark items, labelled texts, and a calibration pair
(documents a run trained on, documents it held out).

    texts = benchmark_texts(items, max_chars=1000)                    # from contamination_cli.read_items
    texts = labelled_texts("wikimia", "wikimia.jsonl", max_chars=1000)  # {"text"|"input", "label": 1|0}
    members, nonmembers = calibration_texts(manifest, count=300, max_chars=1000, seed=0)

Each text is cut to ``max_chars`` characters, the same characters for the model and a reference model
(bits per character compare only on the same text). Length moves every score, so a calibration pair
cut to the same length as the items is what makes its threshold meaningful for them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from zhllama.errors import raise_if_problems
from zhllama.files import json_line_objects

SCAN_PER_TEXT = 100  # calibration reads at most this many documents per text it keeps, per part


@dataclass(frozen=True)
class MembershipText:
    group: str  # "ceval val", "cmrc", "wikimia", "calibration"
    where: str
    key: str
    text: str
    label: bool | None  # True: known to be in the training data; False: known to be out; None: unknown
    status: str | None = None  # the contamination report's verdict (clean, partial, contaminated)


def item_text(fields: tuple[str, ...], max_chars: int, choices: bool = False) -> str:
    """A benchmark item as it would be copied into a corpus: its fields a line each; with ``choices`` the
    fields after the question lettered as exam sites and the benchmarks' own prompts show them (A. …)."""
    lines = [f.strip() for f in fields]
    if choices:
        lines = lines[:1] + [f"{letter}. {c}" for letter, c in zip("ABCDEFGH", lines[1:])]
    return "\n".join(line for line in lines if line)[:max_chars]


LABEL_OF_STATUS = {"contaminated": True, "clean": False, "partial": None}


def benchmark_texts(items: list, max_chars: int, statuses: dict | None = None,
                    passage_sets: frozenset[str] = frozenset()) -> list[MembershipText]:
    """Items of ``evaluation.contamination_cli.read_items``, grouped by benchmark and split; with the
    contamination ``statuses`` ({(benchmark, split, key): status}) contaminated items are labelled
    members, clean ones non-members. Of a reading set (``passage_sets``) the passage alone is scored: it is
    what a corpus holds (Wikipedia's paragraphs), its questions were written for the set."""
    from .benchmarks import LAYOUTS

    out = []
    for it in items:
        status = None if statuses is None else statuses[(it.benchmark, it.split, it.key)]
        fields = it.fields[:1] if it.benchmark in passage_sets else it.fields
        text = item_text(fields, max_chars, choices=it.benchmark in LAYOUTS)
        out.append(MembershipText(f"{it.benchmark} {it.split}" if it.split != "all" else it.benchmark, it.where,
                                  it.key, text, LABEL_OF_STATUS.get(status), status))
    return out


def labelled_texts(name: str, path: str | Path, max_chars: int) -> list[MembershipText]:
    """JSON Lines of ``{"text": ..., "label": 1 | 0}`` (WikiMIA's ``"input"`` is read as the text; label
    1 / true = in the training data), every bad line reported."""
    path = Path(path)
    problems: list[str] = []
    out = []
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise_if_problems(f"--labelled {name}", [f"{path}: not readable as UTF-8 text ({e})"])
    for number, obj in json_line_objects(content, problems, lambda n: f"{path}: line {n}"):
        text = obj.get("text", obj.get("input"))
        label = obj.get("label")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{path}: line {number}: expected \"text\" (or \"input\") with non-empty text")
        elif label not in (0, 1) or isinstance(label, float):
            problems.append(f"{path}: line {number}: expected \"label\": 1 (in the training data) or 0, got {label!r}")
        else:
            out.append(MembershipText(name, f"{path}:{number}", str(obj.get("id", number)), text.strip()[:max_chars],
                                      bool(label)))
    if not problems and not out:
        problems.append(f"{path}: no texts")
    if not problems and len({t.label for t in out}) < 2:
        problems.append(f"{path}: every text has label {int(out[0].label)}; both 1 and 0 are needed to measure separation")
    raise_if_problems(f"--labelled {name}", problems)
    return out


def _sample(documents, count: int, rng: random.Random) -> list:
    """A seeded uniform sample of ``count`` from the first ``count * SCAN_PER_TEXT`` documents."""
    kept: list = []
    for seen, doc in enumerate(documents):
        if seen >= count * SCAN_PER_TEXT:
            break
        if len(kept) < count:
            kept.append(doc)
        else:
            j = rng.randrange(seen + 1)
            if j < count:
                kept[j] = doc
    return kept


def calibration_texts(manifest, count: int, max_chars: int, seed: int) -> tuple[list[MembershipText], list[MembershipText]]:
    """About ``count`` documents of the manifest's training part (members) and of its held-out slice
    (non-members), an equal share sampled from each source with weight > 0."""
    from corpora.manifest import iter_documents

    rng = random.Random(seed)
    sources = [s for s in manifest.sources if s.weight > 0]
    per_source = -(-count // max(len(sources), 1))
    out = []
    for split, label in (("train", True), ("holdout", False)):
        docs = [d for s in sources for d in _sample(iter_documents(s, split=split), per_source, rng)]
        out.append([MembershipText("calibration", f"{d.source} {d.file}:{d.line}", f"{split}:{i}", d.text[:max_chars],
                                   label) for i, d in enumerate(docs)])
    return out[0], out[1]


def without_training_overlap(manifest, nonmembers: list[MembershipText], workers: int = 1) -> tuple[list, int]:
    """The held-out documents none of whose 13-unit grams is in the manifest's training part, and how many
    were dropped: a held-out document that near-duplicates a trained one (a reposted article, an edited
    copy) is not a non-member, and a few such set the 5% threshold (benchmarks/membership_quality.py: 14 of 82
    held-out CMRC paragraphs; with them Min-K%++ flagged 7% of the trained passages, without them 62%).
    Streams the training part once, as ``evaluation contamination`` does."""
    from .contamination import ContaminationSettings
    from .contamination_scan import scan_manifest

    scan = scan_manifest(manifest, [(t.text,) for t in nonmembers], ContaminationSettings(), workers)
    kept = [t for t, v in zip(nonmembers, scan.index.verdicts()) if v.status not in ("partial", "contaminated")]
    return kept, len(nonmembers) - len(kept)
