"""The number a math answer stands for: read off references and off what a model wrote.

Shared by GRPO's ``math`` reward (sft/rewards.py) and ``python -m evaluation math``, so a model is
scored by the rule it was trained with. Numbers compare exactly, as fractions: ``1,200`` = ``1200``,
``0.5`` = ``1/2`` = ``\\frac{1}{2}``; full-width digits (NFKC) read as digits.

* A reference: what follows GSM8K's ``####``, else its last ``\\boxed{…}``, else its last number (a
  worked solution such as BELLE's school-math answers, or a bare number such as CMATH's ``golden``).
* A model's answer: its last ``\\boxed{…}``, else the first number after its first ``####``, else the first
  after its last 答案 / "the answer is" / "final answer", else its last number.
"""
from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

NUMBER = re.compile(r"[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
# 答案 / 答案是 / 答案：, "the answer is", "final answer:"; not a bare "Answer:", the label GSM8K's few-shot layout
# starts every solution with (a model that runs on into another exemplar writes it before its working)
ANSWER_MARK = re.compile(r"答案\s*(?:是|为)?\s*[:：]?|\banswer\s+is\b\s*:?|\bfinal\s+answer\b\s*(?:is)?\s*[:：]?",
                         re.IGNORECASE)
_FRAC = re.compile(r"\\d?frac\{\s*(-?[\d.,]+)\s*\}\{\s*(-?[\d.,]+)\s*\}")


def as_fraction(text: str) -> Fraction | None:
    text = text.replace(",", "").replace("−", "-")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> Fraction | None:
    found = NUMBER.findall(text)
    return as_fraction(found[-1]) if found else None


def plain(text: str) -> str:
    """NFKC (full-width digits), and LaTeX's \\frac{a}{b} as a/b."""
    return _FRAC.sub(r"\1/\2", unicodedata.normalize("NFKC", text))


def reference_number(reference: str) -> Fraction | None:
    """The number a reference answer stands for (GSM8K's ``#### n``, a boxed value, or its last number)."""
    text = plain(reference)
    if "####" in text:
        return last_number(text.rsplit("####", 1)[1]) or last_number(text)
    boxed = BOXED.findall(text)
    return last_number(boxed[-1]) if boxed else last_number(text)


def marked_number(completion: str) -> Fraction | None:
    """The number a completion states as its answer: boxed, else the first after its first ``####`` (GSM8K's
    last line: what follows is not the answer; lm-eval's strict match reads it so), else the first after its
    last 答案 / "the answer is" / "final answer"; None where it marks none."""
    text = plain(completion)
    boxed = BOXED.findall(text)
    if boxed:
        return last_number(boxed[-1])
    if "####" in text:
        after = NUMBER.search(text, text.index("####") + 4)
        return as_fraction(after.group()) if after else None
    marks = list(ANSWER_MARK.finditer(text))
    if marks:
        after = NUMBER.search(text, marks[-1].end())
        if after:
            return as_fraction(after.group())
    return None


def completion_number(completion: str) -> Fraction | None:
    """The number a completion gives as its answer: the marked one, else its last number."""
    marked = marked_number(completion)
    return marked if marked is not None else last_number(plain(completion))


def final_answer(completion: str) -> str:
    """What follows a reasoning model's ``<think>…</think>`` block, where there is one; else the whole text."""
    return completion.rsplit("</think>", 1)[1] if "</think>" in completion else completion


def number_text(value: Fraction | None) -> str | None:
    """A fraction as JSON-friendly text: ``72``, ``-1/2``; None stays None."""
    if value is None:
        return None
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
