"""Math word problems by generation: few-shot chain-of-thought prompts, answers read as numbers, accuracy.

A base model continues worked exemplars. In English the layout is lm-evaluation-harness's GSM8K task
(``Question: …\\nAnswer: <worked solution>\\n#### 72``, exemplars joined by a blank line, the answer ending
at the next ``Question:``); in Chinese the same with 问题：/解答： and a last line ``答案：72``. A chat
model gets each question as a user turn with an instruction to reason step by step and end with that
last line; exemplars become earlier turns. The exemplars are the first ``shots`` of a seeded shuffle of
the pool (a set of worked solutions: GSM8K's train split, or the set itself without the question asked),
the same for every question and every model. A prompt that does not fit drops exemplars, then counts as
unanswered.

An answer's number is read as GRPO's ``math`` reward reads it (zhllama/math_answer.py; after the
``</think>`` of a reasoning model): ``accuracy``
counts those equal to the reference. ``strict`` counts only answers that state it after an answer mark
(####, 答案, a boxed value), as lm-eval's strict match does; ``marked`` is the share of answers with a
mark. With ``samples`` > 1 (sampled, seeded): ``maj`` (self-consistency: the most frequent number,
Wang et al. 2023; a tie goes to the one written first) and ``pass`` (any sample right).
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass

from zhllama.math_answer import completion_number, final_answer, marked_number, number_text

from .math_data import MathItem, MathSet

FORMAT = {
    "en": {"question": "Question: ", "answer": "Answer:", "space": " ", "final": "#### ",
           "instruction": 'Solve it step by step, and end with a last line "#### " followed by the final number.'},
    "zh": {"question": "问题：", "answer": "解答：", "space": "", "final": "答案：",
           "instruction": "请一步一步推理，最后一行写“答案：”和最终的数字。"},
}
MAX_SHOTS = 8
ANSWER_ROOM = 512  # tokens kept for the answer: prompts get the model's positions less this (--max-new-tokens)


@dataclass(frozen=True)
class MathPrompt:
    item: MathItem
    ids: list[int] | None  # None: too long even without exemplars
    shots: int
    exemplars: tuple[str, ...]  # their keys
    rendered: str = ""  # the text the ids are (a chat model's: its template rendered)
    chat: bool = False


def solution_text(item: MathItem, language: str) -> str:
    """An exemplar's answer: its worked solution, then the final answer after the language's mark."""
    mark = FORMAT[language]["final"] + item.final
    return f"{item.reasoning}\n{mark}" if item.reasoning else mark


def stop_text(language: str, chat: bool) -> list[str]:
    """Where a base model's answer ends: the next question it starts to write (a chat model ends its turn)."""
    return [] if chat else [FORMAT[language]["question"].strip()]


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The answer before the first stop text (generators keep the stop they ended at)."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text


def exemplars_for(pool: list[MathItem], shots: int, seed: int, asked: MathItem | None) -> list[MathItem]:
    """The first ``shots`` of the pool shuffled by ``seed``, passing over the question asked (same set)."""
    order = list(pool)
    random.Random(seed).shuffle(order)
    return [e for e in order if asked is None or e.key != asked.key][:shots]


def base_text(language: str, question: str, exemplars: list[MathItem]) -> str:
    f = FORMAT[language]
    shots = [f"{f['question']}{e.question}\n{f['answer']}{f['space']}{solution_text(e, language)}" for e in exemplars]
    return "\n\n".join(shots + [f"{f['question']}{question}\n{f['answer']}"])


def chat_messages(language: str, question: str, exemplars: list[MathItem]) -> list[dict]:
    ask = lambda q: {"role": "user", "content": f"{q}\n{FORMAT[language]['instruction']}"}  # noqa: E731
    turns = []
    for e in exemplars:
        turns += [ask(e.question), {"role": "assistant", "content": solution_text(e, language)}]
    return turns + [ask(question)]


def rendered(tokenizer, language: str, question: str, exemplars: list[MathItem], chat: bool) -> tuple[str, list[int]]:
    """(the text the model reads, its ids): BOS + the few-shot text, or the chat template rendered (its own
    special tokens written out)."""
    if chat:
        text = tokenizer.apply_chat_template(chat_messages(language, question, exemplars), add_generation_prompt=True,
                                             tokenize=False)
        return text, tokenizer(text, add_special_tokens=False).input_ids
    text = base_text(language, question, exemplars)
    return text, tokenizer(text).input_ids


def encode(tokenizer, language: str, question: str, exemplars: list[MathItem], chat: bool) -> list[int]:
    return rendered(tokenizer, language, question, exemplars, chat)[1]


def build_prompts(tokenizer, math_set: MathSet, pool: list[MathItem], same_set: bool, shots: int, seed: int,
                  budget: int, chat: bool) -> list[MathPrompt]:
    """One prompt per item within ``budget`` tokens, with as many of the exemplars as fit."""
    language, out = math_set.language, []
    for item in math_set.items:
        exemplars = exemplars_for(pool, shots, seed, item if same_set else None)
        for n in range(len(exemplars), -1, -1):
            text, ids = rendered(tokenizer, language, item.question, exemplars[:n], chat)
            if len(ids) <= budget:
                out.append(MathPrompt(item, ids, n, tuple(e.key for e in exemplars[:n]), text, chat))
                break
        else:
            out.append(MathPrompt(item, None, 0, ()))
    return out


def reference_requests(tokenizer, prompts: list[MathPrompt], language: str, positions: int) -> list:
    """Per prompt, two answer_scorer.AnswerRequests read without generating: the reference's worked solution
    after the prompt (as an exemplar's is written), and its final answer after the prompt, the reasoning and the
    answer mark; None for a prompt that does not fit (or whose solution does not) the model's positions."""
    from .answer_scorer import AnswerRequest, answer_ids

    out = []
    for p in prompts:
        if p.ids is None:
            out.append(None)
            continue
        special = not p.chat
        lead = "" if p.chat else FORMAT[language]["space"]
        solution = answer_ids(tokenizer, p.rendered, special, p.ids, lead + solution_text(p.item, language))
        # the mark's trailing space goes with the number: "#### 72" tokenizes as "####" + " 72", not "#### " + "72"
        mark = FORMAT[language]["final"].rstrip()
        context = p.rendered + lead + (f"{p.item.reasoning}\n" if p.item.reasoning else "") + mark
        context_ids = tokenizer(context, add_special_tokens=special).input_ids
        final = answer_ids(tokenizer, context, special, context_ids, FORMAT[language]["final"][len(mark):] + p.item.final)
        fits = len(p.ids) + len(solution) <= positions and len(context_ids) + len(final) <= positions
        out.append((AnswerRequest(p.ids, solution), AnswerRequest(context_ids, final)) if fits else None)
    return out


def score_references(model, requests: list, batch_size: int, device, pad_id: int) -> list:
    """Per request pair, ((log-prob, greedy) of the solution, of the final answer); None where it did not fit.
    ``model`` may be a DeepSpeed engine (every rank calls with the same requests)."""
    from .answer_scorer import score_answers

    flat = [r for pair in requests for r in (pair or (None, None))]
    got = score_answers(model, flat, batch_size, device, pad_id)
    return [None if pair is None else (got[2 * i], got[2 * i + 1]) for i, pair in enumerate(requests)]


def reference_metrics(prompts: list[MathPrompt], scores: list, language: str) -> dict:
    """From (log-prob, greedy) of each prompt's worked solution and of its final answer (None: did not fit):
    ``solution_bits_per_char`` over all solutions together, ``answer_greedy`` in percent of the problems (the
    final answer greedy decoding writes after the reference's reasoning); and each problem's numbers."""
    import math

    items = []
    for p, got in zip(prompts, scores):
        if got is None:
            items.append({"key": p.item.key, "too_long": True})
            continue
        chars = len(("" if p.chat else FORMAT[language]["space"]) + solution_text(p.item, language))
        items.append({"key": p.item.key, "solution_bits": round(-got[0][0] / math.log(2), 4), "solution_chars": chars,
                      "answer_greedy": got[1][1]})
    scored = [i for i in items if "solution_bits" in i]
    chars = sum(i["solution_chars"] for i in scored)
    return {"solution_bits_per_char": round(sum(i["solution_bits"] for i in scored) / chars, 4) if chars else None,
            "answer_greedy": round(100.0 * sum(i["answer_greedy"] for i in scored) / len(items), 3) if items else None,
            "items": items}


def reference_prompts(tokenizer, math_set: MathSet, pool: list[MathItem], same_set: bool, shots: int,
                      max_items: int | None, seed: int, positions: int,
                      answer_room: int = ANSWER_ROOM) -> tuple[list[MathPrompt], list]:
    """The prompts and reference requests a run's ``eval.math`` scores: base prompts of a seeded sample within the
    model's positions less ``answer_room``, as `evaluation math --shots --max-items --seed --max-new-tokens` builds
    them."""
    prompts = build_prompts(tokenizer, sample_problems(math_set, max_items, seed), pool, same_set, shots, seed,
                            positions - answer_room, False)
    return prompts, reference_requests(tokenizer, prompts, math_set.language, positions)


def sample_problems(math_set: MathSet, count: int | None, seed: int) -> MathSet:
    """``count`` problems chosen by ``seed``, in file order (all of them without a count)."""
    if not count or count >= len(math_set.items):
        return math_set
    keep = set(random.Random(seed).sample(range(len(math_set.items)), count))
    return MathSet(math_set.path, [item for i, item in enumerate(math_set.items) if i in keep], math_set.left_out)


def sample_seed(seed: int, key: str, sample: int) -> int:
    """The seed of one sampled answer: a function of the item and sample only (a rerun asks the same)."""
    digest = hashlib.blake2b(f"math/{seed}/{key}/{sample}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def majority(numbers: list) -> object | None:
    """The most frequent number (None ignored); a tie goes to the one written first."""
    counts = Counter(n for n in numbers if n is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(n for n in numbers if n is not None and counts[n] == top)


def scored_item(prompt: MathPrompt, answers: list[str] | None, statuses: dict[str, str] | None = None) -> dict:
    """One problem's answers, the numbers read off them and whether they are right; with ``statuses`` (question
    key -> partial | contaminated, from a contamination report) whether the problem is in the training data."""
    from .benchmarks import item_key

    item = prompt.item
    row = {"key": item.key, "category": item.category, "reference": number_text(item.answer),
           "prompt_tokens": None if prompt.ids is None else len(prompt.ids), "shots": prompt.shots}
    if statuses is not None:
        row["contamination"] = statuses.get(item_key([item.question]), "clean")
    if answers is None:
        return {**row, "too_long": True, "correct": False}
    numbers = [completion_number(final_answer(a)) for a in answers]  # a reasoning model's: after </think>
    strict = [marked_number(final_answer(a)) for a in answers]
    vote = majority(numbers)
    return {**row, "answers": answers, "numbers": [number_text(n) for n in numbers],
            "right": [n == item.answer for n in numbers], "strict": [n == item.answer for n in strict],
            "marked": [n is not None for n in strict], "vote": number_text(vote), "correct": vote == item.answer}


def _percent(part: float, whole: int) -> float | None:
    return round(100.0 * part / whole, 3) if whole else None


def summary(items: list[dict], samples: int) -> dict:
    """Accuracy, strict accuracy and marked share (per answer, averaged over samples), in percent of all
    items (a prompt too long scores 0); with samples > 1 also maj and pass; the same per category."""
    def totals(rows: list[dict]) -> dict:
        n = len(rows)
        mean = lambda key: sum(sum(r[key]) / len(r[key]) for r in rows if key in r)  # noqa: E731
        out = {"problems": n, "accuracy": _percent(mean("right"), n), "strict": _percent(mean("strict"), n),
               "marked": _percent(mean("marked"), n)}
        if samples > 1:
            out |= {"maj": _percent(sum(r["correct"] for r in rows), n),
                    "pass": _percent(sum(any(r.get("right", [])) for r in rows), n)}
        return out
    out = {**totals(items), "too_long": sum(1 for i in items if i.get("too_long"))}
    categories = sorted({i["category"] for i in items if i["category"] is not None})
    if categories:
        out["by_category"] = {c: totals([i for i in items if i["category"] == c]) for c in categories}
    if any("contamination" in i for i in items):  # clean problems apart from those the training data holds
        out["contamination"] = {status: totals(group) for status in ("clean", "partial", "contaminated")
                                if (group := [i for i in items if i.get("contamination") == status])}
    return out


# settings that change what is asked or how it is scored: a comparison needs them equal
SAME_SETTINGS = ("shots", "shots_from", "chat", "max_items", "seed", "samples", "temperature", "top_p",
                 "max_new_tokens", "only")


def compare_results(old: dict, new: dict, where: str) -> dict:
    """Per set in both: accuracy before and now, the change, and the items gained and lost (``correct``:
    the answer, or the majority of the samples, right now and not before, and the reverse)."""
    from .generated_runs import comparable_sets

    shared = comparable_sets(old, new, where, SAME_SETTINGS, "problems")
    out = {"results": where, "model": old.get("model"), "sets": {}}
    for name in shared:
        before, after = old["sets"][name], new["sets"][name]
        pairs = list(zip(before["items"], after["items"]))
        metric = "maj" if "maj" in after else "accuracy"
        out["sets"][name] = {"metric": metric, "before": before[metric], "now": after[metric],
                             "change": round(after[metric] - before[metric], 3),
                             "gained": [b["key"] for b, a in pairs if a["correct"] and not b["correct"]],
                             "lost": [b["key"] for b, a in pairs if b["correct"] and not a["correct"]]}
    return out


def table(result: dict) -> str:
    samples = result["settings"]["samples"]
    extra = " maj | pass |" if samples > 1 else ""
    lines = [f"| set | problems | accuracy | strict | marked |{extra} too long |",
             "|---|---:|---:|---:|---:|" + "---:|" * (3 if samples > 1 else 1)]
    references = [(name, s) for name, s in result["sets"].items() if s.get("solution_bits_per_char") is not None]

    def row(name: str, s: dict, too_long: str) -> str:
        more = f" {s['maj']:.2f} | {s['pass']:.2f} |" if samples > 1 else ""
        return f"| {name} | {s['problems']} | {s['accuracy']:.2f} | {s['strict']:.2f} | {s['marked']:.1f} |{more} {too_long} |"
    for name, s in result["sets"].items():
        lines.append(row(name, s, str(s["too_long"])))
        lines += [row(f"{name} / {c}", v, "") for c, v in s.get("by_category", {}).items()]
        lines += [row(f"{name} / {status} (training data)", v, "") for status, v in s.get("contamination", {}).items()]
    if references:  # read without generating: what `eval.math` logs during training
        lines += ["", "| set | reference solution: bits/char | final answer greedy after the reference's reasoning |",
                  "|---|---:|---:|"]
        lines += [f"| {name} | {s['solution_bits_per_char']:.4f} | {s['answer_greedy']:.2f} |" for name, s in references]
    compare = result.get("compare")
    if compare:
        lines += ["", f"against {compare['model']} ({compare['results']}):", "",
                  "| set | metric | before | now | change | gained | lost |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['metric']} | {c['before']:.2f} | {c['now']:.2f} | {c['change']:+.2f} "
                  f"| {len(c['gained'])} | {len(c['lost'])} |" for name, c in compare["sets"].items()]
    return "\n".join(lines)
