"""Exact match and F1 of an extracted answer, as the reading-comprehension benchmarks define them.

``cmrc`` is the CMRC 2018 / DRCD metric (ymcui/cmrc2018 ``cmrc2018_evaluate.py``, v5): text lowered,
each Chinese character one segment and every other run split into words; F1 from the LONGEST COMMON
SUBSTRING of the segment lists (not SQuAD's bag of tokens), EM on the text with the script's own
punctuation list removed; the best over the reference answers. Two quirks of the official script are
kept on purpose, so numbers compare with published ones: a removed punctuation mark does not split
the run around it ("10:30" is one word, "1030"), and only U+4E00..U+9FA5 count as Chinese.

``squad`` is SQuAD v1.1's: lower case, ASCII punctuation and the articles a/an/the removed, F1 from the
bag of whitespace tokens.

The official script splits non-Chinese runs with NLTK's word tokenizer; ``_words`` applies the same
Penn Treebank conventions (marks apart except a comma or colon inside a number and a period inside a
word, quotes as `` and '', contractions apart; full-width marks stay in their word), without NLTK.
``benchmarks/reading_metric_crosscheck.py`` measures the agreement with the official script.
"""
from __future__ import annotations

import re
import string
from collections import Counter

# the official script's list ("……" is a two-character entry there, so it never matches a character)
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_HAN = re.compile(r"[\u4e00-\u9fa5]")
# Penn Treebank conventions as NLTK's word_tokenize applies them (text already lower case): patterns in
# order put spaces around marks, then the run splits on spaces. Opening quotes become ``, closing ones ''.
_OPENING = [(re.compile(p), r) for p, r in (
    (r"([«“‘„]|`+)", r" \1 "), (r'^"', " `` "), (r'([ (\[{<])("|\'\')', r"\1 `` "),
    (r"(')(?!re|ve|ll|m|t|s|d|n)(\w)\b", r"\1 \2"),
    (r"([^.])(\.)([\]\)}>\"'»”’ ]*)\s*$", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"), (r"([:,])$", r" \1 "),  # "1,000" and "10:30" stay whole
    (r"\.{2,}", r" \g<0> "), (r"[;@#$%&]", r" \g<0> "),
    (r"([^.])(\.)([\]\)}>\"']*)\s*$", r"\1 \2\3 "),  # a period apart only at the run's end
    (r"[?!]", r" \g<0> "), (r"([^'])' ", r"\1 ' "), (r"[*]", r" \g<0> "),
    (r"[\]\[(){}<>]", r" \g<0> "), (r"--", r" -- "),
)]
_CLOSING = [(re.compile(p), r) for p, r in (
    (r"([»”’])", r" \1 "), (r"''", " '' "), (r'"', " '' "), (r"\s+", " "),
    (r"([^' ])('s|'m|'d|') ", r"\1 \2 "), (r"([^' ])('ll|'re|'ve|n't) ", r"\1 \2 "),
    (r"\b(can)(not)\b", r" \1 \2 "), (r"\b(d)('ye)\b", r" \1 \2 "), (r"\b(gim|lem)(me)\b", r" \1 \2 "),
    (r"\b(gon)(na)\b", r" \1 \2 "), (r"\b(got)(ta)\b", r" \1 \2 "), (r"\b(more)('n)\b", r" \1 \2 "),
    (r"\b(wan)(na)(?=\s)", r" \1 \2 "), (r" ('t)(is|was)\b", r" \1 \2 "),
)]
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _words(run: str) -> list[str]:
    text = run
    for pattern, replacement in _OPENING:
        text = pattern.sub(replacement, text)
    text = f" {text} "
    for pattern, replacement in _CLOSING:
        text = pattern.sub(replacement, text)
    return text.split()


def cmrc_segments(text: str, drop_punctuation: bool = True) -> list[str]:
    """Chinese characters (and kept punctuation marks) one by one; the runs between them as words."""
    out: list[str] = []
    run: list[str] = []
    for char in text.lower().strip():
        if drop_punctuation and char in CMRC_PUNCTUATION:
            continue  # skipped without ending the run, as the official script does
        if _HAN.match(char) or char in CMRC_PUNCTUATION:
            out += _words("".join(run))
            run = []
            out.append(char)
        else:
            run.append(char)
    return out + _words("".join(run))


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest contiguous run of segments that ``a`` and ``b`` share."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def _f1(common: int, predicted: int, expected: int) -> float:
    if common == 0:
        return 0.0
    precision, recall = common / predicted, common / expected
    return 2 * precision * recall / (precision + recall)


def cmrc_f1(answer: str, prediction: str) -> float:
    a, p = cmrc_segments(answer), cmrc_segments(prediction)
    return _f1(longest_common_run(a, p), len(p), len(a))


def cmrc_exact(answer: str, prediction: str) -> bool:
    def bare(text: str) -> str:
        return "".join(c for c in text.lower().strip() if c not in CMRC_PUNCTUATION)

    return bare(answer) == bare(prediction)


def squad_normal(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in _ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(answer: str, prediction: str) -> float:
    a, p = squad_normal(answer).split(), squad_normal(prediction).split()
    return _f1(sum((Counter(a) & Counter(p)).values()), len(p), len(a))


def squad_exact(answer: str, prediction: str) -> bool:
    return squad_normal(answer) == squad_normal(prediction)


METRICS = {"cmrc": (cmrc_exact, cmrc_f1), "squad": (squad_exact, squad_f1)}


def score(answers: list[str], prediction: str, metric: str) -> tuple[bool, float]:
    """(exact match, F1) of ``prediction``: the best over the reference ``answers``."""
    exact, f1 = METRICS[metric]
    return any(exact(a, prediction) for a in answers), max(f1(a, prediction) for a in answers)
