"""GRPO's ``judge`` reward: an LLM judge's 1-10 grade of each answer, from an OpenAI-compatible server (vLLM,
TGI, llama.cpp's server, a hosted API), for prompts no rule can check (BELLE's open questions, writing,
brainstorming).

The judge is asked what ``python -m evaluation judge`` asks (zhllama/judge_prompts.py): the question, its input,
the reference answer when the record has one, the answer, and the criterion of the record's BELLE ``class``
(strict where the reference decides what is correct, loose where it is one good answer among many). Its last
"评分：X" line is the grade; the reward is (X - 1) / 9, in [0, 1]. A reply without a grade scores 0 and is
counted in a warning. Requests go out ``workers`` at a time with retries (zhllama/openai_client.py), at
temperature 0, and every reply is kept in ``output_dir/judge_calls-rank{r}.jsonl`` by what was asked: a
resumed run gets the very grades again without asking.

Grades the model is trained on are grades it learns to please: evaluate the result with another judge (or
rules), and watch the answers' length (judges favour long answers; ``evaluation judge`` reports it).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from zhllama.files import sha256_json
from zhllama.judge_prompts import grade_messages, read_grade
from zhllama.openai_client import Endpoint, ReplyCache, ask_all, first_choice, post

from .data import Conversation

CHAT = "/chat/completions"


class JudgeReward:
    """``(prompt keys, answers) -> grades in [0, 1]``, for one rank's answers at a time."""

    def __init__(self, endpoint: Endpoint, conversations: list[Conversation], references: list[str | None],
                 records: list[dict], calls_file: Path, workers: int, max_tokens: int):
        self.endpoint, self.conversations, self.references, self.records = endpoint, conversations, references, records
        self.calls_file, self.workers, self.max_tokens = calls_file, workers, max_tokens
        self._cache: ReplyCache | None = None

    def messages(self, key: int, answer: str) -> list[dict[str, Any]]:
        """What the judge reads: the prompt's last user turn (and its input), the reference, the answer."""
        last = self.conversations[key].turns[-1]
        task = str(self.records[key].get("class") or "")
        return grade_messages(task, last.user, last.input, self.references[key], answer)

    def __call__(self, keys: list[int], answers: list[str]) -> list[float]:
        if self._cache is None:  # opened on first use: the rank is known by then
            self.calls_file.parent.mkdir(parents=True, exist_ok=True)
            self._cache = ReplyCache(self.calls_file)
        payloads = [{"messages": self.messages(k, a), "max_tokens": self.max_tokens, "temperature": 0.0}
                    for k, a in zip(keys, answers)]
        asked = {sha256_json({"model": self.endpoint.model, **p}): p for p in payloads}
        replies = ask_all(asked, self._send, self._cache, self.workers, "judge", progress=False)
        grades = [read_grade(replies[sha256_json({"model": self.endpoint.model, **p})]) for p in payloads]
        unreadable = sum(g is None for g in grades)
        if unreadable:
            print(f"[zhllama] judge: {unreadable} of {len(grades)} replies had no 评分 line in 1-10; scored 0",
                  file=sys.stderr, flush=True)
        return [0.0 if g is None else (g - 1) / 9 for g in grades]

    def _send(self, payload: dict[str, Any]) -> str:
        reply = post(self.endpoint, CHAT, payload)
        return (first_choice(self.endpoint, CHAT, reply).get("message") or {}).get("content") or ""
