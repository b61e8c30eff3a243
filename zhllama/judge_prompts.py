"""What the LLM judge is asked, and how its verdict is read back: by ``python -m evaluation judge``, and by GRPO's
``judge`` reward (sft/reward_judge.py), so a model trained on the judge's grades is graded by the same rubric.

Two questions, in Chinese (strong judges read both languages; an English eval set works too: an
answer is marked down for not using the question's language, so forgetting English shows):

* grade: one answer, with the reference answer when the item has one, scored 1-10;
* compare: two answers to the same question, verdict A, B or tie. The caller asks twice with the
  answers swapped (judges prefer a position; see evaluation/judge.py).

What counts depends on the kind of task (BELLE's eval classes): for math, code and closed questions
the reference decides what is correct; for open questions, brainstorming and writing the reference is
one good answer among many. The judge ends its reply with a fixed line ("评分：7", "结论：A"), read
with the last match, so reasoning before it may mention other numbers or letters freely.
"""
from __future__ import annotations

import re

from zhllama.files import sha256_json

SYSTEM = "你是一位严格、公正的评审，负责评价 AI 助手对用户问题的回答。只根据回答的内容评价，不考虑回答的长度和先后顺序。"

_STRICT = "参考答案给出了正确结果：回答的结论与参考答案不一致即为错误，应给低分。"
_LOOSE = "参考答案只是一种可能的好回答，回答不必与它一致；看是否切题、准确、有用、表达清楚。"
CRITERIA = {
    "math": "最终结果是否正确最重要，其次是推理过程。" + _STRICT,
    "code": "代码是否正确、能否运行、是否满足题目要求最重要。" + _STRICT,
    "closed qa": "答案是否与给定材料和参考答案的事实一致。" + _STRICT,
    "extract": "是否准确、完整地抽取了所要求的信息。" + _STRICT,
    "classification": "类别是否判断正确。" + _STRICT,
    "summarization": "是否忠实于原文、覆盖要点、简洁。" + _LOOSE,
    "rewrite": "是否保持原意并满足改写要求。" + _LOOSE,
    "generation": "是否满足写作要求、内容充实、语言通顺。" + _LOOSE,
    "brainstorming": "想法是否切题、多样、可行。" + _LOOSE,
    "open qa": "回答是否准确、有用、全面。" + _LOOSE,
}
DEFAULT_CRITERION = "回答是否正确、有用、切题、表达清楚。"
_LANGUAGE = "回答的语言与问题不同（问题另有要求的除外）、重复、跑题或没有说完，都应扣分。"

GRADE_ASK = "先用一两句话说明理由，最后单独一行写“评分：X”，X 是 1 到 10 的整数（10 最好）。"
COMPARE_ASK = "先简要说明理由，最后单独一行写“结论：A”、“结论：B”或“结论：平”（两者一样好或一样差）。"

GRADE_RE = re.compile(r"(?:评分|score)\s*[:：]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
VERDICT_RE = re.compile(r"(?:结论|verdict)\s*[:：]\s*\**\s*(A|B|平|tie)\b", re.IGNORECASE)
TIE = "tie"


def task_class(name: str | None) -> str:
    """BELLE's class names carry a no-break space ("closed\\xa0qa"); one spelling for both."""
    return " ".join((name or "").replace("\xa0", " ").split()).lower() or "all"


def criterion(task: str) -> str:
    return CRITERIA.get(task_class(task), DEFAULT_CRITERION) + _LANGUAGE


def _question_block(question: str, context: str, reference: str | None) -> str:
    text = f"[问题]\n{question}\n"
    if context:
        text += f"\n[输入]\n{context}\n"
    if reference:
        text += f"\n[参考答案]\n{reference}\n"
    return text


def grade_messages(task: str, question: str, context: str, reference: str | None, answer: str) -> list[dict]:
    user = (_question_block(question, context, reference) + f"\n[助手的回答]\n{answer}\n\n"
            + f"评价要点：{criterion(task)}\n{GRADE_ASK}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def compare_messages(task: str, question: str, context: str, reference: str | None, first: str,
                     second: str) -> list[dict]:
    user = (_question_block(question, context, reference) + f"\n[回答 A]\n{first}\n\n[回答 B]\n{second}\n\n"
            + f"评价要点：{criterion(task)}\n请比较两个回答哪个更好。{COMPARE_ASK}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def read_grade(reply: str) -> float | None:
    """The score of the reply's last "评分：X" line, or None when there is none in 1-10."""
    found = GRADE_RE.findall(reply or "")
    if not found:
        return None
    score = float(found[-1])
    return score if 1 <= score <= 10 else None


def read_verdict(reply: str) -> str | None:
    """"A", "B" or "tie" from the reply's last "结论：…", or None."""
    found = VERDICT_RE.findall(reply or "")
    if not found:
        return None
    last = found[-1].upper()
    return TIE if last in ("平", "TIE") else last


def prompts_fingerprint() -> str:
    """Changes whenever any wording above changes: results asked with other prompts are not comparable."""
    return sha256_json({"system": SYSTEM, "criteria": CRITERIA, "default": DEFAULT_CRITERION, "language": _LANGUAGE,
                        "grade": GRADE_ASK, "compare": COMPARE_ASK,
                        "sample": grade_messages("x", "q", "i", "r", "a") + compare_messages("x", "q", "i", "r", "a", "b")})
