"""Cheap signs of a broken answer, counted per class beside ROUGE-L by `sft generate`.

The failures instruction-tuned LLaMA models show first, each caught without a judge:

* unfinished — generation reached ``--max-new-tokens`` before the reply's stop token: the model did
  not learn where a reply ends (or the limit is too low for the task);
* looping — at least half of the answer's character 4-grams repeat an earlier one (a phrase or
  sentence said over and over); answers under 24 grams are too short to tell;
* language switch — a Chinese question answered with under 10% Han characters among its letters,
  or a question without Chinese answered mostly (over half) in Han. Fenced code blocks are left out
  first, so a Chinese request for a program is judged by its explanation.

Thresholds are deliberately coarse. BELLE's 631 reference answers repeat 6% of their 4-grams at the
median, 25% at the 95th percentile and 47% at most, a loop repeats almost all: none is flagged. A
translation switches language on purpose: 22 reference answers do (19 translations, 2 unfenced
code, 1 English text classified in Chinese), which is why the counts are per class.
"""
from __future__ import annotations

import re

NGRAM = 4
MIN_GRAMS = 24
LOOPING_SHARE = 0.5
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")
FENCED = re.compile(r"```.*?(```|$)", re.S)


def _grams(text: str) -> list[str]:
    chars = "".join(text.split())
    return [chars[i:i + NGRAM] for i in range(len(chars) - NGRAM + 1)]


def _repeated_share(grams: list[str]) -> float:
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def repetition(text: str) -> float:
    """Share of the character 4-grams (whitespace removed) that repeat an earlier 4-gram."""
    return _repeated_share(_grams(text))


def _loops(grams: list[str], share: float) -> bool:
    return len(grams) >= MIN_GRAMS and share >= LOOPING_SHARE  # too few grams: too short to tell


def is_looping(text: str) -> bool:
    grams = _grams(text)
    return _loops(grams, _repeated_share(grams))


def han_share(text: str) -> float | None:
    """Han characters among Han characters and Latin letters, or None when there are none."""
    han, latin = len(HAN.findall(text)), len(LATIN.findall(text))
    return han / (han + latin) if han + latin else None


def switched_language(question: str, answer: str) -> bool:
    asked, answered = han_share(question), han_share(FENCED.sub(" ", answer))
    if asked is None or answered is None:
        return False
    return answered < 0.1 if asked >= 0.5 else (asked < 0.1 and answered > 0.5)


def health(question: str, answer: str, finished: bool) -> dict[str, bool | float]:
    """The row fields `sft generate` writes for one answer."""
    grams = _grams(answer)  # once: repetition and looping read the same grams
    share = _repeated_share(grams)
    return {"finished": finished, "repetition": round(share, 4),
            "looping": _loops(grams, share),
            "language_switch": switched_language(question, answer)}


def health_by_class(rows: list[dict]) -> dict[str, dict[str, float | int]]:
    """Per class (and 'all'): answers, the share unfinished / looping / switched, the mean length in characters."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        for key in (row.get("class") or "(none)", "all"):
            groups.setdefault(key, []).append(row)

    def share(members: list[dict], test) -> float:
        return round(sum(1 for r in members if test(r)) / len(members), 4)
    return {key: {"answers": len(members), "unfinished": share(members, lambda r: not r["finished"]),
                  "looping": share(members, lambda r: r["looping"]),
                  "language_switch": share(members, lambda r: r["language_switch"]),
                  "mean_chars": round(sum(len(r["prediction"]) for r in members) / len(members), 1)}
            for key, members in sorted(groups.items())}


def health_table(by_class: dict[str, dict[str, float | int]]) -> str:
    lines = ["| class | answers | unfinished | looping | language switch | mean chars |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {h['answers']} | {h['unfinished']:.3f} | {h['looping']:.3f} | {h['language_switch']:.3f} | "
              f"{h['mean_chars']} |" for name, h in by_class.items()]
    return "\n".join(lines)
