"""Reading in a long context: the question's paragraph hidden among other articles' paragraphs.

Passkey retrieval finds a number in filler; this asks a real question whose answer is in one
paragraph of a passage filled to ``tokens`` with paragraphs of other articles of the same set
(LongBench's multi-document QA, built from any SQuAD-layout set). The other paragraphs are chosen by
the seed and the question's id, the same for every depth; the question's paragraph sits at each of
``depths`` (0 = first, 1 = last). Scored as the short prompts are.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .reading import Exemplar, ReadingPrompt, encode, prompt_text
from .reading_data import Question, ReadingSet


@dataclass
class Haystack:
    tokens: int  # the prompt length to fill
    depths: list[float]
    paragraphs: list[tuple[int, str]]  # (article, text), each text once
    sizes: dict[str, int] = field(default_factory=dict)  # text -> its tokens (+1 for the line break)

    @classmethod
    def of(cls, reading: ReadingSet, tokens: int, depths: list[float], tokenizer) -> "Haystack":
        seen, paragraphs = set(), []
        for q in reading.questions:
            text = q.context.strip()
            if text not in seen:
                seen.add(text)
                paragraphs.append((q.article, text))
        sizes = {t: len(tokenizer(t, add_special_tokens=False).input_ids) + 1 for _, t in paragraphs}
        return cls(tokens, depths, paragraphs, sizes)

    def others(self, question: Question, room: int, seed: int) -> list[str]:
        """Paragraphs of other articles, in a seeded order, while they fit in ``room`` tokens."""
        rng = random.Random(f"{seed}:{question.key}:haystack")
        pool = [text for article, text in self.paragraphs if article != question.article]
        chosen, used = [], 0
        for text in rng.sample(pool, len(pool)):
            if used + self.sizes[text] > room:
                break
            chosen.append(text)
            used += self.sizes[text]
        return chosen

    def prompts(self, tokenizer, short: ReadingPrompt, exemplars: list[Exemplar], language: str, seed: int,
                chat: bool) -> list[ReadingPrompt]:
        """``short`` (the question with its own paragraph) hidden at each depth, filled to ``tokens``."""
        q = short.question
        if short.ids is None or len(short.ids) > self.tokens:
            return [ReadingPrompt(q, None, 0, (), depth) for depth in self.depths]
        others = self.others(q, self.tokens - len(short.ids), seed)
        out = []
        for depth in self.depths:
            kept = list(others)
            while True:  # the sizes are counted apart: joined text may take a few more tokens
                at = round(depth * len(kept))
                passage = "\n".join(kept[:at] + [q.context.strip()] + kept[at:])
                text = prompt_text(language, q, exemplars, passage)
                ids = encode(tokenizer, text, chat)
                if len(ids) <= self.tokens or not kept:
                    break
                kept.pop()
            out.append(ReadingPrompt(q, ids, short.shots, short.exemplars, depth, passage, text))
        return out
