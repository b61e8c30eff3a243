"""Prompts for letter-logit scoring, in the format Chinese-LLaMA-Alpaca's C-Eval scripts and MMLU use.

One question is rendered as::

    {question}
    A. {A}
    B. {B}
    C. {C}
    D. {D}
    答案：                      (MMLU: "Answer:")

A k-shot prompt is a header line naming the subject, a blank line, the first k dev exemplars each
followed by its answer letter and a blank line, then the question. The model is scored on the
letter that would come next: C-Eval and CMMLU write it right after "答案：", MMLU after a space
(" A"), as in the original MMLU prompts.
"""
from __future__ import annotations

from dataclasses import dataclass

from .benchmarks import LETTERS, Item
from .subjects import CEVAL_SUBJECTS, CMMLU_SUBJECTS


@dataclass(frozen=True)
class Style:
    header: str  # formatted with {subject}
    cue: str  # ends every question; the answer letter follows
    letter_prefix: str  # what comes between the cue and the letter


STYLES = {
    "ceval": Style("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "答案：", ""),
    "cmmlu": Style("以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n", "答案：", ""),
    "mmlu": Style("The following are multiple choice questions (with answers) about {subject}.\n\n", "Answer:", " "),
}


def subject_title(benchmark: str, subject: str) -> str:
    """How the header names a subject: C-Eval's and CMMLU's Chinese names (as their own prompts do);
    otherwise (MMLU, unlisted subjects) the name with spaces."""
    names = {"ceval": CEVAL_SUBJECTS, "cmmlu": CMMLU_SUBJECTS}.get(benchmark, {})
    if subject in names:
        return names[subject][0]
    return subject.replace("_", " ")


def render_question(item: Item, style: Style) -> str:
    lines = [item.question] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices)]
    return "\n".join(lines) + "\n" + style.cue


def build_prompt(benchmark: str, item: Item, exemplars: list[Item]) -> str:
    """The full prompt for ``item``; the letter continuation is ``continuations(benchmark)``."""
    style = STYLES[benchmark]
    parts = [style.header.format(subject=subject_title(benchmark, item.subject))]
    for ex in exemplars:
        parts.append(render_question(ex, style) + style.letter_prefix + ex.answer + "\n\n")
    parts.append(render_question(item, style))
    return "".join(parts)


def continuations(benchmark: str) -> list[str]:
    """The four strings whose first token is compared after the prompt ("A".."D", or " A".." D")."""
    return [STYLES[benchmark].letter_prefix + letter for letter in LETTERS]
