"""Does ``eval.math`` see math being forgotten? A tiny LLaMA learns GSM8K-layout word problems, then continues on
Chinese text only, or on Chinese with some of the problems replayed; at each point, what ``eval.math`` logs (read,
not generated) beside the accuracy of generated answers.

    python benchmarks/math_forgetting.py --work runs/math_forgetting [--steps 300] [--every 50]

Offline, CPU, a few minutes on 2 cores. The problems are benchmarks/math_crosscheck.py's (English, worked
solutions with calculator notes, ``#### n``); the Chinese text is CMRC 2018's paragraphs from ../shared/data
(the script stops, saying so, where they are absent). Stage 1 trains on 400 problems; stage 2 continues from it
on the Chinese paragraphs alone ("zh only"), or with one problem in every four batches ("replay", the usual
remedy). At each evaluation, on 60 held-out problems with 3 worked exemplars: ``solution_bits_per_char`` and
``answer_greedy`` (evaluation/math_eval.py's reference numbers, the ones ``eval.math`` logs) and the accuracy of
greedy chain-of-thought answers (``evaluation math``'s). Printed as a table per stage.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
CMRC = REPO.parent / "shared" / "data" / "pretrain" / "cmrc2018_dev_contexts.txt"


def gsm_text(record: dict) -> str:
    return f"Question: {record['question']}\nAnswer: {record['answer']}\n\n"


def make_model(root: Path, problems: list[dict], chinese: list[str]) -> Path:
    from engine.tiny import DEFAULT_TEXT, make_tiny_model, make_tiny_tokenizer

    texts = DEFAULT_TEXT + [gsm_text(r) for r in problems] + chinese[:300]
    tok = make_tiny_tokenizer(root / "tok", texts, vocab_size=6000)  # Chinese needs its characters
    return make_tiny_model(root / "model", tok, hidden=96, layers=3, heads=4, seed=0)


def train(model, tok, opt, texts: list[str], steps: int, rng: random.Random, batch: int = 8, block: int = 160):
    """``steps`` optimizer steps on batches of ``batch`` texts drawn from ``texts``, each cut to ``block`` tokens."""
    import torch

    model.train()
    for _ in range(steps):
        rows = [tok(t).input_ids[:block] for t in rng.sample(texts, batch)]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tok.eos_token_id] * (width - len(r)) for r in rows])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def continue_on_chinese(model, tok, learned_texts: list[str], chinese: list[str], learned: dict, steps: int,
                        every: int, measure, block: int = 160) -> dict[str, list[tuple[int, dict]]]:
    """Stage 2 from copies of ``model``: on ``chinese`` alone ("zh only"), or with ``learned_texts`` in one batch of
    every four ("replay"); ``measure(model)`` every ``every`` steps. Per stage, [(step, measured)]."""
    import copy

    import torch

    rows = {}
    for stage, replay in (("zh only", False), ("replay", True)):
        student = copy.deepcopy(model)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
        data_rng = random.Random(2)
        rows[stage] = [(0, learned)]
        for done in range(every, steps + 1, every):
            for _ in range(every):
                texts = learned_texts if replay and data_rng.random() < 0.25 else chinese
                train(student, tok, opt, texts, 1, data_rng, block=block)
            rows[stage].append((done, measure(student)))
            print(f"{stage}, step {done}: {rows[stage][-1][1]}", flush=True)
    return rows


def measure(model, tok, test, pool) -> dict:
    """eval.math's two numbers and the accuracy of greedy chain-of-thought answers, on the same prompts."""
    from types import SimpleNamespace

    from evaluation.choice import pad_id_of
    from evaluation.math_eval import (cut_at_stop, reference_metrics, reference_prompts, score_references,
                                      scored_item, stop_text, summary)
    from evaluation.math_generate import generate_answers

    positions = model.config.max_position_embeddings
    prompts, requests = reference_prompts(tok, test, pool, False, 3, None, 0, positions, 64)
    reference = reference_metrics(prompts, score_references(model, requests, 8, "cpu", pad_id_of(tok)), "en")
    settings = SimpleNamespace(temperature=0.0, samples=1, max_new_tokens=48, batch_size=8, device="cpu", seed=0)
    stops = stop_text("en", False)
    answers = generate_answers(model, tok, prompts, settings, stops)
    items = [scored_item(p, [cut_at_stop(t, stops) for t in a]) for p, a in zip(prompts, answers)]
    return {"solution_bits_per_char": reference["solution_bits_per_char"], "answer_greedy": reference["answer_greedy"],
            "accuracy": summary(items, 1)["accuracy"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/math_forgetting")
    p.add_argument("--first-steps", type=int, default=600, help="stage 1: steps on the problems")
    p.add_argument("--steps", type=int, default=300, help="stage 2: steps on Chinese (with or without replay)")
    p.add_argument("--every", type=int, default=100)
    args = p.parse_args()
    if not CMRC.is_file():
        print(f"skipped: {CMRC} is absent (../shared/data, see PROVENANCE.md)")
        return 0
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.math_data import read_math_set
    from math_crosscheck import problem

    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    problems = [problem(rng) for _ in range(460)]
    train_set, test_rows = problems[:400], problems[400:]
    (work / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows), encoding="utf-8")
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_set), encoding="utf-8")
    test, pool = read_math_set(work / "test.jsonl"), read_math_set(work / "train.jsonl").items
    chinese = [line for line in CMRC.read_text(encoding="utf-8").splitlines() if line.strip()]
    folder = make_model(work, train_set, chinese)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    print(f"start: {measure(model, tok, test, pool)}", flush=True)
    train(model, tok, torch.optim.AdamW(model.parameters(), lr=2e-3), [gsm_text(r) for r in train_set],
          args.first_steps, random.Random(1))
    learned = measure(model, tok, test, pool)
    print(f"after {args.first_steps} steps on the problems: {learned}", flush=True)
    rows = continue_on_chinese(model, tok, [gsm_text(r) for r in train_set], chinese, learned, args.steps, args.every,
                               lambda student: measure(student, tok, test, pool))
    print("\n| stage 2 step | zh only: solution bits/char | answer greedy | accuracy | replay: solution bits/char "
          "| answer greedy | accuracy |\n|---:|---:|---:|---:|---:|---:|---:|")
    for (step, a), (_, b) in zip(rows["zh only"], rows["replay"]):
        print(f"| {step} | {a['solution_bits_per_char']:.4f} | {a['answer_greedy']:.1f} | {a['accuracy']:.1f} "
              f"| {b['solution_bits_per_char']:.4f} | {b['answer_greedy']:.1f} | {b['accuracy']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
