"""Helpers (no tests): reading sets in SQuAD's layout and a tiny model whose answers depend on the prompt."""
from __future__ import annotations

import json


def squad_file(path, articles):
    """``articles`` (``article(...)`` each) written as a SQuAD-layout JSON file at ``path``."""
    path.write_text(json.dumps({"data": articles}, ensure_ascii=False), encoding="utf-8")
    return path


def article(title: str, context: str, qas: list[tuple[str, str, str]]) -> dict:
    """One article of one paragraph; ``qas`` are (id, question, answer), the answer found in the context."""
    return {"title": title, "paragraphs": [{"context": context, "qas": [
        {"id": key, "question": q, "answers": [{"text": a, "answer_start": context.find(a)}]} for key, q, a in qas]}]}


def input_dependent(folder):
    """A random tiny model answers every prompt alike (weights of std 0.02); wide weights make each answer
    depend on its prompt, so an answer scored in another question's place is seen."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    return folder
