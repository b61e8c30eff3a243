"""What distillation gives a small student over instruction tuning, and what its on-policy part adds, side by side
with TRL's DistillationTrainer: the same start, teacher, data and steps; held-out numbers by one function.

    PYTHONPATH=. /tmp/trl/bin/python benchmarks/distill_quality.py --work runs/distill_quality

Needs ``trl`` in a side venv, set up as benchmarks/dpo_crosscheck.py says (tested: trl 1.16.0, torch 2.13 CPU);
without it the TRL column is left out (``python benchmarks/distill_quality.py ...``). Offline, CPU, fp32, one
process each. Data: ../shared/data/sft/alpaca_zh_demo.json (1,000 Chinese Alpaca records; PROVENANCE.md), a
5,000-piece tokenizer (every character of the records, and merges) trained on them, the chinese-alpaca-2 template,
10% of records held out by the manifest rule.

The teacher: a LLaMA 128 wide, 4 layers, instruction-tuned on the training records by ``sft train`` (full, 400
steps). The student: 64 wide, 2 layers (a quarter of the teacher's non-embedding weights), instruction-tuned for
100 steps, the start every run below shares. Each then trains 150 more steps of 8 records, AdamW 2e-3, constant:

* ``sft``: more instruction tuning on the data's answers (``objective: sft``);
* ``kd``: the teacher's distributions on the data's answers (``distill.lmbda=0``, ``beta=0``: forward KL,
  word-level KD);
* ``gkd``: half the micro batches on the student's own answers, generalized JSD (``lmbda=0.5``, ``beta=0.5``: GKD);
* ``on-policy``: only its own answers, reverse KL (``lmbda=1``, ``beta=1``: TRL's DistillationTrainer, Qwen3's and
  Thinking Machines' on-policy distillation);
* ``TRL``: DistillationTrainer with ``beta=1`` on the same prompts as text.

Held out (the same function for every model): nats per token of the reference answers; forward KL to the teacher
on them; on 2 answers per prompt the model samples (temperature 1, <= 48 tokens, seeded), the reverse KL to the
teacher per token (the divergence where the student actually writes) and the teacher's nats per token of them
(how likely the teacher finds the student's text); character ROUGE-L F1 of the greedy answer against the reference.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sft" / "alpaca_zh_demo.json"
STEPS, BATCH, LR, MAX_NEW, SEQ = 150, 8, 2e-3, 48, 256
RUNS = {"sft": ["objective=sft"],
        "kd": ["distill.lmbda=0", "distill.beta=0"],
        "gkd": ["distill.lmbda=0.5", "distill.beta=0.5"],
        "on-policy": ["distill.lmbda=1", "distill.beta=1"]}


def sft_train(work: Path, name: str, model: Path, data: Path, steps: int, *extra: str) -> tuple[Path, float]:
    """(the run's final folder, seconds per step after the first) of ``python -m sft train``."""
    out = work / name
    cmd = [sys.executable, "-m", "sft", "train", "--config", str(REPO / "sft/configs/distill_tiny_cpu.yaml"),
           f"model.path={model}", f"output_dir={out}", f"data.cache_dir={work / 'cache'}",
           f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.1", f"data.max_seq_length={SEQ}", "mode=full",
           f"optim.lr={LR}", "optim.betas=[0.9, 0.999]", f"schedule.max_steps={steps}",
           f"batch.micro_batch_size={BATCH}",
           "deepspeed.preset=zero2", "eval.every_steps=0", "eval.at_start=false", "checkpoint.resume=never",
           f"distill.max_new_tokens={MAX_NEW}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    return out / "final", (logged[-1]["time"] - logged[0]["time"]) / (len(logged) - 1)


def run_trl(work: Path, start: Path, teacher: Path, tok, prompts: list[str]) -> tuple[Path, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    cfg = DistillationConfig(output_dir=str(work / "trl"), learning_rate=LR, lr_scheduler_type="constant",
                             warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
                             max_steps=STEPS, per_device_train_batch_size=BATCH, max_completion_length=MAX_NEW,
                             temperature=1.0, top_p=1.0, top_k=0, beta=1.0, use_cpu=True, bf16=False,
                             report_to="none", logging_steps=1, save_strategy="no", seed=1234, disable_tqdm=True)
    student = AutoModelForCausalLM.from_pretrained(str(start), dtype=torch.float32)
    teacher_model = AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32)
    trainer = DistillationTrainer(student, teacher_model=teacher_model, args=cfg, processing_class=tok,
                                  train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                                  callbacks=[Clock()])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    final = work / "trl" / "final"
    trainer.save_model(str(final))
    return final, (times[-1] - times[0]) / (len(times) - 1)


class HeldOut:
    """The held-out records' rows and prompts, scored against the teacher by one function for every model."""

    def __init__(self, rows: list[tuple[list[int], list[int]]], references: list[str], teacher: Path, tok, stops):
        self.rows, self.references, self.tok, self.stops = rows, references, tok, stops
        self.teacher = self._load(teacher)

    @staticmethod
    def _load(folder: Path):
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    def _logits(self, model, ids: list[int]):
        import torch

        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, :-1]

    def score(self, folder: Path) -> dict[str, float]:
        import torch

        from engine.distill_loss import token_divergence
        from sft.generate import Sampling, generate_ids, rouge_l_f1_chars

        model = self._load(folder)
        sums = dict.fromkeys(("nll", "fkl", "tokens", "rkl_own", "teacher_nll_own", "own_tokens", "rouge"), 0.0)
        for (ids, labels), reference in zip(self.rows, self.references):
            targets = torch.tensor(labels[1:])
            keep = targets != -100
            student, teacher = self._logits(model, ids)[keep], self._logits(self.teacher, ids)[keep]
            sums["nll"] += float(torch.nn.functional.cross_entropy(student, targets[keep], reduction="sum"))
            sums["fkl"] += float(token_divergence(student, teacher, 0.0).sum())
            sums["tokens"] += int(keep.sum())
            prompt = ids[:labels.index(next(t for t in labels if t != -100))]
            torch.manual_seed(len(ids))  # seeded by the record: the same samples whatever model is scored
            sampled = generate_ids(model, self.tok, [prompt, prompt], Sampling(
                max_new_tokens=MAX_NEW, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0),
                stop=self.stops)
            for answer in sampled:
                if not answer:
                    continue
                row = prompt + answer
                s, t = self._logits(model, row)[len(prompt) - 1:], self._logits(self.teacher, row)[len(prompt) - 1:]
                sums["rkl_own"] += float(token_divergence(s, t, 1.0).sum())
                sums["teacher_nll_own"] += float(torch.nn.functional.cross_entropy(t, torch.tensor(answer),
                                                                                   reduction="sum"))
                sums["own_tokens"] += len(answer)
            greedy = generate_ids(model, self.tok, [prompt], Sampling(max_new_tokens=MAX_NEW, repetition_penalty=1.0),
                                  stop=self.stops)[0]
            sums["rouge"] += rouge_l_f1_chars(self.tok.decode(greedy, skip_special_tokens=True), reference)
        n = len(self.rows)
        return {"nll": sums["nll"] / sums["tokens"], "fkl": sums["fkl"] / sums["tokens"],
                "rkl_own": sums["rkl_own"] / max(sums["own_tokens"], 1),
                "teacher_nll_own": sums["teacher_nll_own"] / max(sums["own_tokens"], 1),
                "own_tokens": sums["own_tokens"] / (2 * n), "rouge": sums["rouge"] / n}


def prepared(work: Path, model: Path, data: Path):
    """(tokenizer, held-out rows and references, training prompts as text, stop ids): our run's very split."""
    from sft.config import SFTConfig
    from sft.train_cli import _tokenizer_and_template, prepare
    from sft.templates import stop_ids
    from zhllama.config import load_config

    cfg = load_config(SFTConfig, REPO / "sft/configs/distill_tiny_cpu.yaml", [
        f"model.path={model}", "objective=sft", f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.1",
        f"data.max_seq_length={SEQ}", f"data.cache_dir={work / 'cache'}"])
    tok, spec, _ = _tokenizer_and_template(cfg)
    _, _, train, held, _, _ = prepare(cfg)
    rows = [(list(map(int, held[i]["input_ids"])), list(map(int, held[i]["labels"]))) for i in range(len(held))]
    references = [tok.decode([t for t in labels if t != -100], skip_special_tokens=True) for _, labels in rows]
    prompts = []
    for i in range(len(train)):
        ids, labels = list(map(int, train[i]["input_ids"])), list(map(int, train[i]["labels"]))
        first = next(k for k, t in enumerate(labels) if t != -100)
        prompts.append(tok.decode(ids[:first], skip_special_tokens=True))
    return tok, rows, references, prompts, stop_ids(tok, spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/distill_quality", help="folder for the models, data and runs")
    p.add_argument("--data", type=Path, default=DATA, help="Alpaca-style JSON records")
    p.add_argument("--held-out", type=int, default=64, help="held-out records scored (of the split's)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    warnings.filterwarnings("ignore")
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: missing (../shared/data, PROVENANCE.md); give --data")
    from engine.tiny import make_tiny_model, make_tiny_tokenizer

    records = json.loads(args.data.read_text(encoding="utf-8"))
    texts = [r["instruction"] + r.get("input", "") + r["output"] for r in records]
    tok_dir = make_tiny_tokenizer(work / "tok", texts, vocab_size=5000)
    teacher, teacher_step = sft_train(work, "teacher", make_tiny_model(work / "teacher_init", tok_dir, hidden=128,
                                                                       layers=4, heads=4, seed=0),
                                      args.data, 400, "objective=sft")
    start, _ = sft_train(work, "student_start", make_tiny_model(work / "student_init", tok_dir, hidden=64, layers=2,
                                                                 heads=4, seed=1), args.data, 100, "objective=sft")
    tok, rows, references, prompts, stops = prepared(work, start, args.data)
    held = HeldOut(rows[:args.held_out], references[:args.held_out], teacher, tok, stops)
    print(f"{len(prompts)} training records, {len(held.rows)} held out scored; teacher 128x4 ({teacher_step:.2f} "
          f"s/step in its 400 steps), student 64x2 from 100 SFT steps; {STEPS} more steps of {BATCH} records",
          flush=True)
    columns = {"teacher": (held.score(teacher), None), "start": (held.score(start), None)}
    for name, settings in RUNS.items():
        final, step = sft_train(work, name, start, args.data, STEPS, f"distill.teacher={teacher}", *settings)
        columns[name] = (held.score(final), step)
        print(f"  {name}: done ({step:.2f} s/step)", flush=True)
    if importlib.util.find_spec("trl") is None:
        print("  TRL: not importable here, left out")
    else:
        final, step = run_trl(work, start, teacher, tok, prompts)
        columns["TRL on-policy"] = (held.score(final), step)
    print(f"\n{'held out':<44}" + "".join(f"{name:>14}" for name in columns))
    for key, label in (("nll", "reference answers: nats per token"), ("fkl", "  forward KL to the teacher per token"),
                       ("rkl_own", "own samples: reverse KL per token"),
                       ("teacher_nll_own", "  the teacher's nats per token"),
                       ("own_tokens", "  tokens per answer"), ("rouge", "greedy answer: ROUGE-L F1 (chars)")):
        print(f"{label:<44}" + "".join(f"{scores[key]:>14.3f}" for scores, _ in columns.values()))
    print(f"{'seconds per step (after the first)':<44}" + "".join(
        f"{step:>14.3f}" if step else f"{'':>14}" for _, step in columns.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
