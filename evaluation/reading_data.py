"""Reading-comprehension sets in SQuAD's JSON layout (CMRC 2018, DRCD, SQuAD v1.1 / v2.0), checked whole.

    {"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [
        {"id": ..., "question": ..., "answers": [{"text": ..., "answer_start": 12}, ...]}]}]}]}

or JSON Lines (``.jsonl``), one question a line, for a set of your own:

    {"id": "q1", "title": "李白", "context": "...", "question": "...", "answers": ["唐代诗人"]}

Every problem of a file is reported at once, with its place (``data[3].paragraphs[0].qas[2]``).
SQuAD v2.0's unanswerable questions (``is_impossible``) are left out and counted: the metric scores
extracted answers.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from zhllama.errors import raise_if_problems
from zhllama.files import json_line_objects

_HAN = re.compile(r"[\u3400-\u9fff]")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])|(?<=\. )")


@dataclass(frozen=True)
class Question:
    key: str  # the set's own id
    article: int  # index into data[]: few-shot exemplars come from other articles
    context: str
    question: str
    answers: tuple[str, ...]
    answer_start: int | None  # of the first answer, when the file gives it and it matches the context


@dataclass(frozen=True)
class ReadingSet:
    path: Path
    questions: list[Question]
    unanswerable: int

    @property
    def language(self) -> str:
        """zh when most context characters are Chinese, else en (picks the metric and the prompt)."""
        text = "".join(q.context for q in self.questions[:200])
        han = len(_HAN.findall(text))
        return "zh" if han * 2 > len(re.sub(r"\s", "", text)) else "en"


def _text(value, where: str, field: str, problems: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}.{field}: expected non-empty text, got {value!r}"[:200])
        return None
    return value


def _answers(qa: dict, context: str, where: str, problems: list[str]) -> tuple[tuple[str, ...], int | None]:
    answers = qa.get("answers")
    if not isinstance(answers, list) or not answers:
        problems.append(f"{where}.answers: expected a non-empty list of {{'text': ...}}")
        return (), None
    texts = []
    for k, answer in enumerate(answers):
        text = _text(answer.get("text") if isinstance(answer, dict) else None, f"{where}.answers[{k}]", "text",
                     problems)
        if text is not None:
            texts.append(text.strip())
    start = answers[0].get("answer_start") if isinstance(answers[0], dict) else None
    found = isinstance(start, int) and texts and context[start : start + len(texts[0])] == texts[0]
    return tuple(texts), (start if found else None)


def _question(qa, article: int, context: str, where: str, problems: list[str]) -> Question | str | None:
    """A Question, "unanswerable", or None (problems added)."""
    if not isinstance(qa, dict):
        problems.append(f"{where}: expected an object with id, question and answers")
        return None
    if qa.get("is_impossible") is True:
        return "unanswerable"
    key = qa.get("id")
    if not isinstance(key, (str, int)) or isinstance(key, bool) or not str(key).strip():
        problems.append(f"{where}.id: expected a string or number, got {key!r}")
    question = _text(qa.get("question"), where, "question", problems)
    answers, start = _answers(qa, context, where, problems)
    if question is None or not answers or not isinstance(key, (str, int)):
        return None
    return Question(str(key).strip(), article, context, question.strip(), answers, start)


def _paragraphs(article, i: int, problems: list[str]):
    where = f"data[{i}]"
    if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
        problems.append(f"{where}: expected an object with a 'paragraphs' list")
        return
    for j, paragraph in enumerate(article["paragraphs"]):
        at = f"{where}.paragraphs[{j}]"
        context = _text(paragraph.get("context") if isinstance(paragraph, dict) else None, at, "context", problems)
        qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
        if not isinstance(qas, list):
            problems.append(f"{at}.qas: expected a list of questions")
            continue
        if context is not None:
            yield at, context, qas  # not stripped: answer_start counts from its first character


def _read_lines(path: Path) -> ReadingSet:
    """JSON Lines of ``{"id"?, "title"?, "context", "question", "answers": [text | {"text", "answer_start"?}]}``;
    questions on the same ``title`` (else the same context) are one article."""
    problems: list[str] = []
    questions, seen, articles = [], {}, {}
    for n, record in json_line_objects(path.read_text(encoding="utf-8-sig"), problems):
        where = f"line {n}"
        context = _text(record.get("context"), where, "context", problems)
        answers = record.get("answers")
        if context is None:
            continue
        # a bare answer text: its first place in the context (exemplars show the sentence holding it)
        qa = {"id": record.get("id", f"line-{n}"), "question": record.get("question"),
              "answers": [a if isinstance(a, dict) else {"text": a, "answer_start": context.find(str(a).strip())}
                          for a in answers] if isinstance(answers, list) else answers}
        article = articles.setdefault(record.get("title") or context, len(articles))
        got = _question(qa, article, context, where, problems)
        if isinstance(got, Question):
            if got.key in seen:
                problems.append(f"{where}.id: {got.key!r} again (first at {seen[got.key]})")
            seen.setdefault(got.key, where)
            questions.append(got)
    if not questions and not problems:
        problems.append("no question")
    raise_if_problems(f"reading set {path}", problems, limit=30)
    return ReadingSet(path, questions, 0)


def read_reading_set(path: str | Path) -> ReadingSet:
    """Every answerable question of a SQuAD-layout file (or JSON Lines, ``.jsonl``), in file order; all
    problems raised together."""
    path = Path(path)
    if path.suffix == ".jsonl":
        try:
            return _read_lines(path)
        except (OSError, UnicodeDecodeError) as e:
            raise_if_problems(f"reading set {path}", [f"not readable as UTF-8 text: {e}"])
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise_if_problems(f"reading set {path}", [f"not readable as UTF-8 JSON: {e}"])
    problems: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise_if_problems(f"reading set {path}", ["expected SQuAD's layout: an object with a 'data' list"])
    questions, unanswerable, seen = [], 0, {}
    for i, article in enumerate(doc["data"]):
        for at, context, qas in _paragraphs(article, i, problems):
            for k, qa in enumerate(qas):
                got = _question(qa, i, context, f"{at}.qas[{k}]", problems)
                if got == "unanswerable":
                    unanswerable += 1
                elif isinstance(got, Question):
                    if got.key in seen:
                        problems.append(f"{at}.qas[{k}].id: {got.key!r} again (first at {seen[got.key]})")
                    seen.setdefault(got.key, f"{at}.qas[{k}]")
                    questions.append(got)
    if not questions and not problems:
        problems.append("no answerable question")
    raise_if_problems(f"reading set {path}", problems, limit=30)
    return ReadingSet(path, questions, unanswerable)


def simplified(reading: ReadingSet) -> ReadingSet:
    """The set in Simplified characters (OpenCC t2s, as corpora cleaning converts): passages, questions and
    answers alike, so a model trained on Simplified text reads DRCD's Traditional ones, and is scored
    against answers in its own script. An answer's place is found again where conversion moved it."""
    from corpora.cleaning import t2s

    contexts = {q.context: t2s(q.context) for q in reading.questions}  # a passage once, however many questions
    out = []
    for q in reading.questions:
        context, answers = contexts[q.context], tuple(t2s(a) for a in q.answers)
        start = q.answer_start
        if start is not None and context[start:start + len(answers[0])] != answers[0]:
            start = context.find(answers[0]) if answers[0] in context else None
        out.append(Question(q.key, q.article, context, t2s(q.question), answers, start))
    return ReadingSet(reading.path, out, reading.unanswerable)


def answer_sentence(question: Question) -> str | None:
    """The sentence of the context that holds the first answer (a short few-shot passage), or None."""
    if question.answer_start is None:
        return None
    context, start = question.context, question.answer_start
    end = start + len(question.answers[0])
    bounds = [0] + [m.start() for m in _SENTENCE_END.finditer(context) if 0 < m.start() < len(context)]
    first = max(b for b in bounds if b <= start)
    after = [b for b in bounds if b >= end]
    return context[first : after[0] if after else len(context)].strip()
