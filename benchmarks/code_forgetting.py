"""Does ``eval.code`` see Python being forgotten? A tiny LLaMA learns Python from the standard library's source, then
continues on Chinese text only, or on Chinese with some of the Python replayed; at each point, what ``eval.code``
logs (HumanEval's canonical solutions read after their prompts, not generated) beside greedy pass@1.

    python benchmarks/code_forgetting.py --work runs/code_forgetting [--first-steps 800] [--steps 300] [--every 100]

Offline after HumanEval's first fetch (the pinned wheel), CPU, a few minutes on 2 cores. The Python is this
interpreter's standard library (its ``.py`` files cut at top-level ``def``/``class``, up to 1,500 characters
each; real code, nothing downloaded); the Chinese is CMRC 2018's paragraphs from ../shared/data (the script
stops, saying so, where they are absent). Stage 1 trains on the Python; stage 2 continues from it on the
Chinese alone ("zh only") or with Python in one batch of every four ("replay", the usual remedy). At each
evaluation, on HumanEval's 164 tasks: ``solution_bits_per_char`` (evaluation/code_eval.py's reference number,
the one ``eval.code`` logs) and, on the first 40 tasks, pass@1 of greedy completions run against their tests
(``evaluation code``'s). Printed as a table per stage.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
CMRC = REPO.parent / "shared" / "data" / "pretrain" / "cmrc2018_dev_contexts.txt"


def python_texts(limit: int = 6000) -> list[str]:
    """Pieces of the standard library's modules, each starting at a top-level def or class (seeded order)."""
    pieces = []
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        for piece in re.split(r"\n(?=(?:def|class) )", source):
            if piece.startswith(("def ", "class ")) and 200 <= len(piece):
                pieces.append(piece[:1500])
    random.Random(0).shuffle(pieces)
    return pieces[:limit]


def measure(model, tok, humaneval, jobs: int) -> dict:
    """eval.code's number on every task, and greedy pass@1 on the first 40."""
    from types import SimpleNamespace

    from evaluation.answer_scorer import score_answers
    from evaluation.choice import pad_id_of
    from evaluation.code_eval import BASE_STOPS, program_of, reference_metrics, reference_prompts
    from evaluation.code_exec import PASSED, run_programs
    from evaluation.math_generate import generate_answers

    positions = model.config.max_position_embeddings
    prompts, requests = reference_prompts(tok, humaneval, None, positions, 96)
    read = reference_metrics(prompts, score_answers(model, requests, 8, "cpu", pad_id_of(tok)))
    asked = [p for p in prompts[:40] if p.ids is not None]
    settings = SimpleNamespace(temperature=0.0, samples=1, max_new_tokens=96, batch_size=8, device="cpu", seed=0)
    completions = generate_answers(model, tok, asked, settings, BASE_STOPS)
    verdicts = run_programs([program_of(p.item, c[0], False) for p, c in zip(asked, completions)], jobs=jobs)
    return {"solution_bits_per_char": read["solution_bits_per_char"],
            "pass@1": 100.0 * sum(v == PASSED for v in verdicts) / 40}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/code_forgetting")
    p.add_argument("--first-steps", type=int, default=800, help="stage 1: steps on Python")
    p.add_argument("--steps", type=int, default=300, help="stage 2: steps on Chinese (with or without replay)")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    if not CMRC.is_file():
        print(f"skipped: {CMRC} is absent (../shared/data, see PROVENANCE.md)")
        return 0
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import make_tiny_model, make_tiny_tokenizer
    from evaluation.code_data import builtin_file, read_code_set
    from math_forgetting import continue_on_chinese, train

    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    humaneval = read_code_set(builtin_file("humaneval"))
    python = python_texts()
    chinese = [line for line in CMRC.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok_dir = make_tiny_tokenizer(work / "tok", python[:1500] + chinese[:400], vocab_size=8000)
    folder = make_tiny_model(work / "model", tok_dir, hidden=128, layers=4, heads=4, seed=0)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    print(f"start: {measure(model, tok, humaneval, args.jobs)}", flush=True)
    train(model, tok, torch.optim.AdamW(model.parameters(), lr=2e-3), python, args.first_steps, random.Random(1),
          block=256)
    learned = measure(model, tok, humaneval, args.jobs)
    print(f"after {args.first_steps} steps on Python: {learned}", flush=True)
    rows = continue_on_chinese(model, tok, python, chinese, learned, args.steps, args.every,
                               lambda student: measure(student, tok, humaneval, args.jobs), block=256)
    print("\n| stage 2 step | zh only: solution bits/char | pass@1 | replay: solution bits/char | pass@1 |"
          "\n|---:|---:|---:|---:|---:|")
    for (step, a), (_, b) in zip(rows["zh only"], rows["replay"]):
        print(f"| {step} | {a['solution_bits_per_char']:.4f} | {a['pass@1']:.1f} | {b['solution_bits_per_char']:.4f} "
              f"| {b['pass@1']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
