"""Extractive reading comprehension by generation: prompts with few-shot exemplars, answers, scores.

A base model completes "文章：… 问题：… 答案：" after ``shots`` solved examples; a chat model gets the
same text as one user turn of its template. An exemplar shows only the sentence that holds its answer
(a whole CMRC paragraph costs ~500 tokens, a sentence ~45) and always comes from another article than
the question, chosen by the seed and the question's id: two models see the same exemplars. A prompt
that does not fit the model drops exemplars, then counts as unanswered (scored 0, as the official
script scores a missing answer) and is reported.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .reading_data import Question, ReadingSet, answer_sentence
from .reading_metric import score

PROMPT = {
    "zh": {"intro": "阅读文章，用文章中的原文回答问题。", "context": "文章：", "question": "问题：", "answer": "答案："},
    "en": {"intro": "Read the passage and answer the question with words from the passage.",
           "context": "Passage: ", "question": "Question: ", "answer": "Answer:"},
}
EXEMPLAR_MAX_CHARS = 150  # a longer answer sentence is not used as an exemplar
ANSWER_ROOM = 64  # tokens kept for the answer: prompts get the model's positions less this (--max-new-tokens)


@dataclass(frozen=True)
class Exemplar:
    sentence: str
    question: str
    answer: str
    key: str


@dataclass(frozen=True)
class ReadingPrompt:
    question: Question
    ids: list[int] | None  # None: too long for the model even without exemplars
    shots: int
    exemplars: tuple[str, ...]  # their question ids
    depth: float | None = None  # in a haystack (reading_haystack.py): where the question's paragraph sits
    passage: str | None = None  # the haystack; None: the question's own context
    text: str = ""  # the prompt before rendering (encode): the answer's tokens are read after it

    @property
    def key(self) -> str:
        return self.question.key if self.depth is None else f"{self.question.key}@{self.depth:g}"


def exemplar_pool(source: ReadingSet) -> list[tuple[int, Exemplar]]:
    """(article, exemplar) for every question whose answer sentence is short enough to show."""
    pool = []
    for q in source.questions:
        sentence = answer_sentence(q)
        if sentence and len(sentence) <= EXEMPLAR_MAX_CHARS:
            pool.append((q.article, Exemplar(sentence, q.question, q.answers[0], q.key)))
    return pool


def pick_exemplars(question: Question, pool: list[tuple[int, Exemplar]], shots: int, seed: int,
                   same_set: bool) -> list[Exemplar]:
    """``shots`` exemplars from distinct articles, never the question's own (when the pool is its set)."""
    if shots == 0:
        return []
    rng = random.Random(f"{seed}:{question.key}")
    order = rng.sample(range(len(pool)), len(pool))
    out, articles = [], {question.article} if same_set else set()
    for i in order:
        article, exemplar = pool[i]
        if article not in articles:
            articles.add(article)
            out.append(exemplar)
            if len(out) == shots:
                break
    return out


def prompt_text(language: str, question: Question, exemplars: list[Exemplar], passage: str | None = None) -> str:
    t = PROMPT[language]
    passage = question.context.strip() if passage is None else passage
    space = "" if language == "zh" else " "
    parts = [t["intro"]]
    parts += [f"{t['context']}{e.sentence}\n{t['question']}{e.question}\n{t['answer']}{space}{e.answer}"
              for e in exemplars]
    parts.append(f"{t['context']}{passage}\n{t['question']}{question.question}\n{t['answer']}")
    return "\n\n".join(parts)


def rendered(tokenizer, text: str, chat: bool) -> tuple[str, bool]:
    """(the text the model reads, whether the tokenizer adds its special tokens): BOS + text, or one user
    turn of its chat template (which writes its own)."""
    if chat:
        from .long_context import chat_prompt

        return chat_prompt(tokenizer, text), False
    return text, True


def encode(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids as the model reads them (``rendered``)."""
    text, special = rendered(tokenizer, text, chat)
    return tokenizer(text, add_special_tokens=special).input_ids


def answer_target(language: str, answer: str, chat: bool) -> str:
    """What should follow a prompt: the answer, and for a base model the line break that ends it."""
    return answer if chat else ("" if language == "zh" else " ") + answer + "\n"


def build_prompts(tokenizer, reading: ReadingSet, pool: list[tuple[int, Exemplar]], same_set: bool, shots: int,
                  seed: int, budget: int, chat: bool, haystack=None) -> list[ReadingPrompt]:
    """One prompt per question within ``budget`` tokens, with as many of its exemplars as fit; with a
    ``haystack`` (reading_haystack.Haystack), one per question and depth, filled to its length."""
    language, out = reading.language, []
    budget = budget if haystack is None else min(budget, haystack.tokens)
    for q in reading.questions:
        exemplars = pick_exemplars(q, pool, shots, seed, same_set)
        for n in range(len(exemplars), -1, -1):
            text = prompt_text(language, q, exemplars[:n])
            ids = encode(tokenizer, text, chat)
            if len(ids) <= budget:
                prompt = ReadingPrompt(q, ids, n, tuple(e.key for e in exemplars[:n]), text=text)
                break
        else:
            prompt = ReadingPrompt(q, None, 0, ())
        if haystack is None:
            out.append(prompt)
        else:
            out += haystack.prompts(tokenizer, prompt, exemplars[: prompt.shots], language, seed, chat)
    return out


def answer_requests(tokenizer, prompts: list[ReadingPrompt], language: str, chat: bool) -> list:
    """Per prompt that fits, the first reference answer (and its line break) as tokens after the prompt:
    an answer_scorer.AnswerRequest; None for a prompt that does not fit."""
    from .answer_scorer import AnswerRequest, answer_ids

    out = []
    for p in prompts:
        if p.ids is None:
            out.append(None)
            continue
        text, special = rendered(tokenizer, p.text, chat)
        target = answer_target(language, p.question.answers[0], chat)
        out.append(AnswerRequest(p.ids, answer_ids(tokenizer, text, special, p.ids, target)))
    return out


def reference_prompts(tokenizer, whole: ReadingSet, shots: int, max_questions: int, seed: int,
                      positions: int) -> tuple[list[ReadingPrompt], list]:
    """The prompts and reference-answer requests that a run's ``eval.reading`` and ``evaluation base
    --reading`` score: base prompts of a seeded sample, within the model's positions less ANSWER_ROOM
    (`evaluation reading`'s default), as `evaluation reading --shots --max-questions --seed` builds them."""
    prompts = build_prompts(tokenizer, sample_questions(whole, max_questions, seed), exemplar_pool(whole), True,
                            shots, seed, positions - ANSWER_ROOM, False)
    return prompts, answer_requests(tokenizer, prompts, whole.language, False)


def sample_questions(reading: ReadingSet, count: int | None, seed: int) -> ReadingSet:
    """``count`` questions chosen by ``seed``, in file order (all of them without a count)."""
    if not count or count >= len(reading.questions):
        return reading
    keep = set(random.Random(seed).sample(range(len(reading.questions)), count))
    return ReadingSet(reading.path, [q for i, q in enumerate(reading.questions) if i in keep], reading.unanswerable)


def reference_metrics(prompts: list[ReadingPrompt], scores: list, language: str, chat: bool = False) -> dict:
    """From (log-prob, greedy) of each prompt's first reference answer (None: the prompt did not fit):
    ``answer_bits_per_char`` over all answers together and ``greedy_answer`` in percent of the questions
    (a prompt that did not fit counts as not written); and each question's numbers."""
    import math

    items = []
    for p, got in zip(prompts, scores):
        if got is None:
            items.append({"key": p.key, "too_long": True})
            continue
        n = len(answer_target(language, p.question.answers[0], chat))
        items.append({"key": p.key, "answer_bits": -got[0] / math.log(2), "answer_chars": n, "greedy_answer": got[1]})
    totals = reference_totals(items)
    for item in items:
        if "answer_bits" in item:
            item["answer_bits"] = round(item["answer_bits"], 4)
    return {**totals, "items": items}


def reference_totals(items: list[dict]) -> dict:
    """``answer_bits_per_char`` over the scored answers together, ``greedy_answer`` in % of all the items."""
    scored = [i for i in items if "answer_bits" in i]
    chars = sum(i["answer_chars"] for i in scored)
    return {"answer_bits_per_char": round(sum(i["answer_bits"] for i in scored) / chars, 4) if chars else None,
            "greedy_answer": round(100.0 * sum(i["greedy_answer"] for i in scored) / len(items), 3) if items else None}


def clean_answer(text: str, language: str) -> str:
    """The first non-empty line of a continuation, without a repeated "答案：" label."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    label = PROMPT[language]["answer"].strip()
    return re.sub(rf"^{re.escape(label)}\s*", "", line).strip()


def scored_items(prompts: list[ReadingPrompt], answers: list[str | None], language: str, metric: str,
                 statuses: dict[str, str] | None = None, reference: dict | None = None) -> list[dict]:
    """Each question's answer scored; with ``statuses`` (passage key -> partial | contaminated, from a
    contamination report) each is marked clean, partial or contaminated by its own passage; with
    ``reference`` (reference_metrics of the same prompts) its reference answer's bits per character
    and whether greedy decoding writes it."""
    from .benchmarks import item_key

    items = []
    for p, raw in zip(prompts, answers):
        prediction = "" if raw is None else clean_answer(raw, language)
        exact, f1 = score(list(p.question.answers), prediction, metric) if raw is not None else (False, 0.0)
        passage = p.question.context if p.passage is None else p.passage
        items.append({"key": p.key, "question": p.question.question, "answers": list(p.question.answers),
                      "output": raw, "prediction": prediction, "exact": exact, "f1": round(f1, 6),
                      "in_context": bool(prediction) and prediction in passage, "shots": p.shots,
                      "exemplars": list(p.exemplars), "prompt_tokens": None if p.ids is None else len(p.ids),
                      "too_long": p.ids is None, **({} if p.depth is None else {"depth": p.depth})})
        if statuses is not None:
            items[-1]["contamination"] = statuses.get(item_key([p.question.context.strip()]), "clean")
    if reference is not None:
        for item, ref in zip(items, reference["items"]):
            item.update({k: v for k, v in ref.items() if k not in ("key", "too_long")})
    return items


def summary(items: list[dict]) -> dict:
    """EM and F1 in percent over every question (too long = 0, as unanswered), as the official script;
    in a haystack also per depth."""
    out = _scores(items)
    depths = sorted({i["depth"] for i in items if "depth" in i})
    if depths:
        out["by_depth"] = {f"{d:g}": _brief([i for i in items if i.get("depth") == d]) for d in depths}
    if any("contamination" in i for i in items):
        reference = any("answer_bits" in i for i in items)
        out["contamination"] = {status: {**_brief(group), **(reference_totals(group) if reference else {})}
                                for status in ("clean", "partial", "contaminated")
                                if (group := [i for i in items if i.get("contamination") == status])}
    return out


def _brief(items: list[dict]) -> dict:
    return {k: v for k, v in _scores(items).items() if k in ("questions", "em", "f1", "too_long")}


def _scores(items: list[dict]) -> dict:
    n = len(items)
    em = 100.0 * sum(i["exact"] for i in items) / n
    f1 = 100.0 * sum(i["f1"] for i in items) / n
    answered = [i for i in items if i["prediction"]]
    return {"questions": n, "em": round(em, 3), "f1": round(f1, 3), "average": round((em + f1) / 2, 3),
            "too_long": sum(i["too_long"] for i in items), "empty": n - len(answered) - sum(i["too_long"] for i in items),
            "in_context": round(sum(i["in_context"] for i in answered) / len(answered), 4) if answered else None,
            "mean_shots": round(sum(i["shots"] for i in items) / n, 3)}
