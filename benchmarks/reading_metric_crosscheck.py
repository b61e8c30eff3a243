"""Cross-check our CMRC 2018 metric (evaluation/reading_metric.py) against the official script, item by item.

    curl -LO https://raw.githubusercontent.com/ymcui/cmrc2018/c0eb1b6ba219847457e6af3180da722bbeb656af/squad-style-data/cmrc2018_evaluate.py
    python3 -m venv /tmp/nl && /tmp/nl/bin/pip install nltk==3.9.2
    PYTHONPATH=. /tmp/nl/bin/python benchmarks/reading_metric_crosscheck.py --official cmrc2018_evaluate.py

The official script is Python 2 and splits non-Chinese text with NLTK. It is loaded as it is, with
four Python-2-only spellings rewritten in memory (``reload(sys)``, ``setdefaultencoding``,
``.decode('utf-8')``, ``ur''``), and NLTK's ``word_tokenize`` called with ``preserve_line=True``:
without it NLTK first splits sentences with its punkt model, a download that is not on PyPI.

Every question of the CMRC 2018 dev set (``../shared/data``) is scored with predictions a model
could give: the reference answer, it cut short or run on into the passage, the sentence around it,
another span of the passage, the whole passage, wrapped in punctuation, prefixed by "答案是", in other letter case.
Printed per kind of prediction: questions, how many get the same F1 and EM from both, the largest
F1 difference, and both overall scores as the official script reports them; then how many of the
848 passages both split into the same segments, how many of 100,000 random strings of letters, digits
and marks split into the same words as NLTK's word_tokenize, and the disagreements.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import random
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.reading_data import answer_sentence, read_reading_set  # noqa: E402
from evaluation.reading_metric import _words, cmrc_exact, cmrc_f1, cmrc_segments  # noqa: E402

OFFICIAL_SHA256 = "56da606758e4d8607c37af6acecfb4811ede6eb10dd54031deb75231324ba783"  # at c0eb1b6
DEV = ROOT.parent / "shared" / "data" / "pretrain" / "cmrc2018_dev.json"


def load_official(path: Path) -> types.ModuleType:
    import nltk

    text = path.read_text(encoding="utf-8")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != OFFICIAL_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {OFFICIAL_SHA256} (ymcui/cmrc2018@c0eb1b6)")
    for old, new in (("reload(sys)", ""), ("sys.setdefaultencoding('utf8')", ""), (".decode('utf-8')", ""),
                     ("ur'", "r'")):
        text = text.replace(old, new)
    module = types.ModuleType("cmrc2018_evaluate")
    exec(compile(text, str(path), "exec"), module.__dict__)
    module.nltk = types.SimpleNamespace(word_tokenize=functools.partial(nltk.word_tokenize, preserve_line=True))
    return module


def random_runs(count: int, seed: int) -> tuple[int, list[str]]:
    """How many random strings of letters, digits and marks split into the same words as NLTK's."""
    import nltk

    pieces = list("abcdez019 .,:;'\"!?()[]{}<>@#$%&*-") + ["n't", "'s", "cannot", "gonna", "'tis", "...", "«", "“",
                                                            "’", "．", "％"]
    rng, differ = random.Random(seed), []
    for _ in range(count):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        if _words(text) != nltk.word_tokenize(text, preserve_line=True):
            differ.append(text)
    return count - len(differ), differ[:5]


def predictions(question, rng: random.Random) -> dict[str, str]:
    answer, context = question.answers[0], question.context
    start = question.answer_start if question.answer_start is not None else max(context.find(answer), 0)
    end = start + len(answer)
    other = rng.randrange(0, max(1, len(context) - len(answer)))
    return {
        "reference answer": answer,
        "last reference answer": question.answers[-1],
        "runs on 1-8 chars": context[start : end + rng.randint(1, 8)],
        "starts 1-4 chars early": context[max(0, start - rng.randint(1, 4)) : end],
        "cut short": answer[: max(1, len(answer) - rng.randint(1, 3))],
        "its sentence": answer_sentence(question) or context[:80],
        "another span": context[other : other + len(answer)],
        "the whole passage": context,
        "in 《》 with 。": f"《{answer}》。",
        "答案是 + answer": f"答案是{answer}",
        "upper case, spaced": f" {answer.upper()} ",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="cmrc2018_evaluate.py at c0eb1b6")
    parser.add_argument("--dev", type=Path, default=DEV)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    official = load_official(args.official)
    questions = read_reading_set(args.dev).questions
    rng = random.Random(args.seed)
    rows: dict[str, dict] = {}
    mismatches = []
    for q in questions:
        for kind, prediction in predictions(q, rng).items():
            ours = (max(cmrc_f1(a, prediction) for a in q.answers), any(cmrc_exact(a, prediction) for a in q.answers))
            theirs = (official.calc_f1_score(list(q.answers), prediction), official.calc_em_score(list(q.answers), prediction))
            row = rows.setdefault(kind, {"n": 0, "f1": 0, "em": 0, "diff": 0.0, "ours": [0.0, 0], "theirs": [0.0, 0]})
            row["n"] += 1
            row["f1"] += abs(ours[0] - theirs[0]) < 1e-9
            row["em"] += ours[1] == bool(theirs[1])
            row["diff"] = max(row["diff"], abs(ours[0] - theirs[0]))
            row["ours"][0] += ours[0]
            row["ours"][1] += ours[1]
            row["theirs"][0] += theirs[0]
            row["theirs"][1] += theirs[1]
            if abs(ours[0] - theirs[0]) >= 1e-9 or ours[1] != bool(theirs[1]):
                mismatches.append((kind, q.key, q.answers[0], prediction, ours, theirs))
    print(f"CMRC 2018 dev, {len(questions)} questions; ours vs the official script (ymcui/cmrc2018@c0eb1b6, NLTK)\n")
    print("| prediction | questions | same F1 | same EM | max F1 diff | F1 ours | F1 official | EM ours | EM official |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in rows.items():
        n = r["n"]
        print(f"| {kind} | {n} | {r['f1']} | {r['em']} | {r['diff']:.4f} | {100 * r['ours'][0] / n:.3f} "
              f"| {100 * r['theirs'][0] / n:.3f} | {100 * r['ours'][1] / n:.3f} | {100 * r['theirs'][1] / n:.3f} |")
    contexts = sorted({q.context for q in questions})
    same = sum(cmrc_segments(c, False) == official.mixed_segmentation(c) and
               cmrc_segments(c) == official.mixed_segmentation(c, rm_punc=True) for c in contexts)
    print(f"\npassages segmented the same (punctuation kept, and dropped): {same} of {len(contexts)}")
    same_runs, differ = random_runs(100_000, args.seed)
    print(f"random runs of letters, digits and marks split as NLTK's word_tokenize: {same_runs} of 100000 {differ}")
    print(f"{len(mismatches)} disagreements" + (":" if mismatches else ""))
    for kind, key, answer, prediction, ours, theirs in mismatches[:20]:
        print(f"  {key} [{kind}] answer {answer!r} prediction {prediction!r}: ours F1 {ours[0]:.4f} EM {ours[1]}, "
              f"official F1 {theirs[0]:.4f} EM {bool(theirs[1])}")
        print(f"    segments, official: {official.mixed_segmentation(prediction, rm_punc=True)}")
        print(f"    segments, ours:     {cmrc_segments(prediction)}")


if __name__ == "__main__":
    main()
