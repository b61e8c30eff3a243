"""Code generation scored by running it: HumanEval's prompts, completions cut where the function ends, pass@k.

A base model continues the prompt (a signature and docstring) and its completion is cut at the first line that
starts at the left margin with ``class``, ``def``, ``#``, ``if`` or ``print`` (lm-evaluation-harness's and the
Codex paper's stop sequences: the function body has ended). A chat model (``chat=True``) is asked, in a user
turn of its template, to complete the function in a code block; the first fenced block of its reply is the
code (a reply that defines the entry point itself replaces the prompt, keeping the prompt's imports).

pass@k is the unbiased estimator of Chen et al. 2021 from n samples of which c pass:
1 - C(n - c, k) / C(n, k), averaged over tasks; one greedy sample gives pass@1. A prompt that does not fit the
model's positions counts as failed (``too_long``). Failures are counted by kind (the exception's name, or
``timed out``): what broke, beside how much.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .code_data import CodeSet, CodeTask
from .code_exec import PASSED, check_program

BASE_STOPS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the whole function in one ```python code "
                    "block.")
KS = (1, 10, 100)
ANSWER_ROOM = 512  # tokens kept for the completion by default (--max-new-tokens)
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


@dataclass(frozen=True)
class CodePrompt:
    item: CodeTask  # ``item.key``: what math_generate seeds sampled answers with
    ids: list[int] | None  # None: the prompt does not fit
    chat: bool = False


def sample_seed(seed: int, key: str, sample: int) -> int:
    """The seed of one sampled completion: a function of the task and sample only (a rerun asks the same)."""
    digest = hashlib.blake2b(f"code/{seed}/{key}/{sample}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def chat_messages(task: CodeTask) -> list[dict]:
    return [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n\n```python\n{task.prompt.strip()}\n```"}]


def build_prompts(tokenizer, code_set: CodeSet, budget: int, chat: bool) -> list[CodePrompt]:
    """Token ids of every task's prompt (None where longer than ``budget``)."""
    out = []
    for task in code_set.tasks:
        if chat:
            ids = tokenizer.apply_chat_template(chat_messages(task), add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        else:
            ids = tokenizer(task.prompt).input_ids
        out.append(CodePrompt(task, ids if len(ids) <= budget else None, chat))
    return out


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The completion up to the first stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _imports(prompt: str) -> str:
    return "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))


def program_of(task: CodeTask, completion: str, chat: bool) -> str:
    """The program that checks one completion."""
    if not chat:
        return check_program(task.prompt, cut_at_stop(completion, BASE_STOPS), task.test, task.entry_point)
    block = _FENCE.search(completion)
    code = block.group(1) if block else completion
    if re.search(rf"^\s*def\s+{re.escape(task.entry_point)}\s*\(", code, re.MULTILINE):
        return check_program(_imports(task.prompt) + "\n\n", code, task.test, task.entry_point)
    return check_program(task.prompt, code, task.test, task.entry_point)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn from n, c of them passing, passes."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def failure_kind(verdict: str) -> str:
    """``AssertionError``, ``SyntaxError``, ``timed out`` ... of a verdict (``passed`` for a pass)."""
    if verdict in (PASSED, "timed out"):
        return verdict
    text = verdict.removeprefix("failed: ")
    name = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))\b", text)
    return name.group(1).rsplit(".", 1)[-1] if name else text[:60]


def scored_item(prompt: CodePrompt, completions: list[str] | None, verdicts: list[str] | None) -> dict:
    row = {"key": prompt.item.key, "prompt_tokens": None if prompt.ids is None else len(prompt.ids)}
    if completions is None:
        return {**row, "too_long": True, "passed": 0, "samples": 0}
    return {**row, "completions": completions, "verdicts": verdicts, "samples": len(verdicts),
            "passed": sum(v == PASSED for v in verdicts)}


def summary(items: list[dict], samples: int) -> dict:
    """pass@k in percent of all tasks (a prompt too long scores 0), and the completions' verdicts by kind."""
    n = len(items)
    out: dict = {"tasks": n, "too_long": sum(1 for i in items if i.get("too_long"))}
    for k in KS:
        if k <= samples:
            total = sum(pass_at_k(i["samples"], i["passed"], k) for i in items if not i.get("too_long"))
            out[f"pass@{k}"] = round(100.0 * total / n, 3) if n else None
    kinds = Counter(failure_kind(v) for i in items for v in i.get("verdicts", []))
    out["verdicts"] = dict(kinds.most_common())
    return out


SAME_SETTINGS = ("chat", "max_items", "seed", "samples", "temperature", "top_p", "max_new_tokens", "timeout")


def compare_results(old: dict, new: dict, where: str) -> dict:
    """Per set in both: pass@1 before and now, and the tasks gained (some sample passes now, none did) and lost."""
    from .generated_runs import comparable_sets

    shared = comparable_sets(old, new, where, SAME_SETTINGS, "tasks")
    out = {"results": where, "model": old.get("model"), "sets": {}}
    for name in shared:
        before, after = old["sets"][name], new["sets"][name]
        pairs = list(zip(before["items"], after["items"]))
        out["sets"][name] = {"before": before["pass@1"], "now": after["pass@1"],
                             "change": round(after["pass@1"] - before["pass@1"], 3),
                             "gained": [b["key"] for b, a in pairs if a["passed"] and not b["passed"]],
                             "lost": [b["key"] for b, a in pairs if b["passed"] and not a["passed"]]}
    return out


def table(result: dict) -> str:
    ks = [k for k in KS if k <= result["settings"]["samples"]]
    read = [(name, s["solution_bits_per_char"]) for name, s in result["sets"].items()
            if s.get("solution_bits_per_char") is not None]
    lines = [f"| set | tasks | {' | '.join(f'pass@{k}' for k in ks)} | too long | failures (most common) |",
             "|---|---:|" + "---:|" * len(ks) + "---:|---|"]
    for name, s in result["sets"].items():
        failures = ", ".join(f"{kind} {count}" for kind, count in s["verdicts"].items() if kind != PASSED)
        scores = " | ".join(f"{s['pass@' + str(k)]:.2f}" for k in ks)
        lines.append(f"| {name} | {s['tasks']} | {scores} | {s['too_long']} | {failures[:120] or '-'} |")
    if read:  # read without generating: what eval.code logs during training
        lines += ["", "| set | canonical solutions: bits/char |", "|---|---:|"]
        lines += [f"| {name} | {bpc:.4f} |" for name, bpc in read]
    compare = result.get("compare")
    if compare:
        lines += ["", f"against {compare['model']} ({compare['results']}):", "",
                  "| set | pass@1 before | now | change | gained | lost |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['before']:.2f} | {c['now']:.2f} | {c['change']:+.2f} | {len(c['gained'])} | "
                  f"{len(c['lost'])} |" for name, c in compare["sets"].items()]
    return "\n".join(lines)


def reference_requests(tokenizer, prompts: list[CodePrompt], positions: int) -> list:
    """Per base prompt, an answer_scorer.AnswerRequest of the task's canonical solution read after it (None where
    the set has no solution, or prompt and solution do not fit the model's positions)."""
    from .answer_scorer import AnswerRequest, answer_ids

    out = []
    for p in prompts:
        if p.ids is None or p.chat or not p.item.solution:
            out.append(None)
            continue
        solution = answer_ids(tokenizer, p.item.prompt, True, p.ids, p.item.solution)
        out.append(AnswerRequest(p.ids, solution) if len(p.ids) + len(solution) <= positions else None)
    return out


def reference_metrics(prompts: list[CodePrompt], scores: list) -> dict:
    """``solution_bits_per_char``: the canonical solutions' bits per character after their prompts, over all of
    them together (read, not generated: smooth where pass@1 is still 0, and cheap enough to watch in training)."""
    import math

    items = []
    for p, got in zip(prompts, scores):
        if got is None:
            items.append({"key": p.item.key, "scored": False})
            continue
        items.append({"key": p.item.key, "solution_bits": round(-got[0] / math.log(2), 4),
                      "solution_chars": len(p.item.solution), "solution_greedy": got[1]})
    scored = [i for i in items if "solution_bits" in i]
    chars = sum(i["solution_chars"] for i in scored)
    return {"solution_bits_per_char": round(sum(i["solution_bits"] for i in scored) / chars, 4) if chars else None,
            "items": items}


def reference_prompts(tokenizer, code_set: CodeSet, max_items: int | None, positions: int,
                      answer_room: int = ANSWER_ROOM) -> tuple[list[CodePrompt], list]:
    """The base prompts and reference requests ``eval.code`` reads: the first ``max_items`` tasks, prompts within
    the model's positions less ``answer_room``, as `evaluation code --max-items --max-new-tokens` builds them."""
    tasks = CodeSet(code_set.path, code_set.tasks[:max_items] if max_items else code_set.tasks)
    prompts = build_prompts(tokenizer, tasks, positions - answer_room, False)
    return prompts, reference_requests(tokenizer, prompts, positions)
