"""Verifiable rewards for ``objective: grpo``: a number per completion, computed from the text alone.

``grpo.rewards`` maps names to weights; a completion's reward is the weighted sum. Built in:

* ``math`` — 1 when the completion's final number equals the reference's, else 0, read as
  ``python -m evaluation math`` reads them (zhllama/math_answer.py): the reference's after GSM8K's ``####``,
  else boxed, else its last number; the completion's boxed, else after its first ####, else after its last
  答案 / "the answer is" / "final answer", else its last number; compared exactly as fractions (``1,200`` = ``1200``, ``0.5`` = ``1/2`` = ``\\frac{1}{2}``).
* ``exact`` — 1 when the completion equals the reference, ignoring width (NFKC), spaces and final punctuation.
* ``contains`` — 1 when the reference (normalised as above) appears in the completion.
* ``choice`` — 1 when the option letter picked (A–J standing alone, the first after 答案/answer if there is
  one, else the first) is the reference's letter (C-Eval/CMMLU-style multiple choice).
* ``zh_share`` — the share of Han characters among the completion's letters (0 with none): DeepSeek-R1's
  language-consistency reward, which keeps a Chinese model from drifting into another language.
* ``think`` — 1 when the completion is one ``<think>…</think>`` block followed by an answer (DeepSeek-R1's
  format reward for reasoning models); the reference rewards above then read only the answer after it.
* ``judge`` — an LLM judge's 1-10 grade of the answer, as (grade - 1) / 9, from an OpenAI-compatible server
  (``grpo.judge``; sft/reward_judge.py): for prompts no rule can check.
* ``module.path:function`` — your own, called as ``function(completion: str, record: dict) -> float``
  with the raw record from the data file.
"""
from __future__ import annotations

import importlib
import math
import re
import unicodedata
from typing import Any, Callable

from zhllama.errors import UserError
from zhllama.math_answer import completion_number, final_answer, reference_number

NEEDS_REFERENCE = ("math", "exact", "contains", "choice")
BUILT_IN = NEEDS_REFERENCE + ("zh_share", "think", "judge")
_THINK = re.compile(r"\s*<think>(?:(?!</?think>).)*</think>\s*\S(?:(?!</?think>).)*", re.DOTALL)

_CHOICE = re.compile(r"(?<![A-Za-z])([A-J])(?![A-Za-z])")
_CHOICE_MARK = re.compile(r"(?:答案|answer)\s*(?:是|为|is)?\s*[:：]?", re.IGNORECASE)  # "Answer: B" names the option
_TRAILING = "。．.！!？?；;，,、 \t\n"


def _normalise(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).rstrip(_TRAILING)


def math_reward(completion: str, reference: str) -> float:
    want = reference_number(reference)
    return float(want is not None and completion_number(completion) == want)


def exact_reward(completion: str, reference: str) -> float:
    return float(_normalise(completion) == _normalise(reference))


def contains_reward(completion: str, reference: str) -> float:
    want = _normalise(reference)
    return float(bool(want) and want in _normalise(completion))


def chosen_letter(completion: str) -> str | None:
    """The option a completion picks: the first letter A-J standing alone after its last 答案/answer, else the
    first in it; the English pronoun ("I think", "I'm") is not an option."""
    text = unicodedata.normalize("NFKC", completion)
    marks = list(_CHOICE_MARK.finditer(text))
    start = marks[-1].end() if marks and _CHOICE.search(text, marks[-1].end()) else 0
    for found in _CHOICE.finditer(text, start):
        if not (found.group(1) == "I" and re.match(r"(?:\s+[a-z]|')", text[found.end():])):
            return found.group(1)
    return None


def choice_reward(completion: str, reference: str) -> float:
    return float(chosen_letter(completion) == _normalise(reference).upper())


def think_reward(completion: str) -> float:
    return float(_THINK.fullmatch(completion) is not None)


def zh_share_reward(completion: str) -> float:
    letters = [ch for ch in completion if unicodedata.category(ch).startswith("L")]
    han = sum(1 for ch in letters if unicodedata.name(ch, "").startswith("CJK UNIFIED IDEOGRAPH"))
    return han / len(letters) if letters else 0.0


_REFERENCE_REWARDS: dict[str, Callable[[str, str], float]] = {
    "math": math_reward, "exact": exact_reward, "contains": contains_reward, "choice": choice_reward}


def load_custom(spec: str) -> Callable[[str, dict], float]:
    """``module.path:function`` imported; UserError saying what is wrong otherwise."""
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"grpo.rewards: {spec!r} cannot be imported ({exc}); expected module.path:function "
                        "on the Python path") from None
    if not callable(function):
        raise UserError(f"grpo.rewards: {spec!r} is not callable")
    return function


def reward_problems(rewards: dict[str, float]) -> list[str]:
    """Every problem with a ``grpo.rewards`` mapping (names, weights), for config validation."""
    problems = [] if rewards else [f"rewards: at least one is needed (built in: {list(BUILT_IN)}, or module:function)"]
    for name, weight in rewards.items():
        if name not in BUILT_IN and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", str(name)):
            problems.append(f"rewards: {name!r} is neither built in ({list(BUILT_IN)}) nor module.path:function")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight == 0:
            problems.append(f"rewards.{name}: the weight must be a non-zero number, got {weight!r}")
    return problems


class RewardModel:
    """The weighted sum of ``rewards`` over completions; ``references`` and ``records`` are per prompt."""

    def __init__(self, rewards: dict[str, float], references: list[str | None], records: list[dict],
                 judge: Callable[[list[int], list[str]], list[float]] | None = None):
        self.weights = dict(rewards)
        self.custom = {name: load_custom(name) for name in rewards if name not in BUILT_IN}
        self.references, self.records = references, records
        if "judge" in rewards and judge is None:
            raise UserError("grpo.rewards: judge needs grpo.judge.url and grpo.judge.model (an OpenAI-compatible server)")
        self.judge = judge

    def __call__(self, prompt_keys: list[int], completions: list[str]) -> list[float]:
        judged = [None] * len(completions)
        if "judge" in self.weights:  # one batch of requests for the micro batch's answers, in parallel
            judged = self.judge(prompt_keys, [final_answer(text) for text in completions])
        return [self.score(key, text, grade) for key, text, grade in zip(prompt_keys, completions, judged)]

    def score(self, key: int, completion: str, judged: float | None = None) -> float:
        total = 0.0
        for name, weight in self.weights.items():
            if name == "judge":
                value = judged
            elif name == "zh_share":
                value = zh_share_reward(completion)
            elif name == "think":
                value = think_reward(completion)
            elif name in _REFERENCE_REWARDS:
                value = _REFERENCE_REWARDS[name](final_answer(completion), self.references[key] or "")
            else:
                value = _custom_value(name, self.custom[name](completion, self.records[key]))
            total += weight * value
        return total


def _custom_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"grpo.rewards: {name} returned {value!r}; a reward must be a finite number")
    return float(value)
