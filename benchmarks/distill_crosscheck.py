"""Cross-check the distillation objective (engine/distill.py) against TRL's two implementations of the same
divergence, on the same rows: the loss and its gradient.

    PYTHONPATH=. /tmp/trl/bin/python benchmarks/distill_crosscheck.py --work runs/distill_crosscheck

Needs ``trl`` in a side venv, set up as benchmarks/dpo_crosscheck.py says (tested: trl 1.16.0, torch 2.13 CPU,
transformers 5.23). Offline, CPU, fp32: a tiny tokenizer, a random tiny LLaMA student (32 wide, 2 layers) and a
teacher of another shape (48 wide, 3 layers, its output layer scaled by 6 so that its distributions are far from
uniform). Rows: Chinese SFT records in the chinese-alpaca-2 template (the data's answers), and the same prompts
answered by the student (``DistillObjective.student_answers``: sampled, cut at EOS or at 12 tokens).

Ours (the engine's two heads): ``DistillObjective.divergence`` with the fused head (both models' hidden states, 7
positions' logits at a time, the gradient written out) and with both models' full logits (autograd), divided by
the answer tokens, as the engine does. TRL: ``GKDTrainer.generalized_jsd_loss`` on both models' full logits (its
``batchmean``: the sum over answer tokens / their count; its logits shifted by one as in ``compute_loss``), and
DistillationTrainer's ``_chunked_divergence_loss`` (its tiled kernel) on both models' last hidden states at the
positions that predict answer tokens. ``beta`` 0 (forward KL), 0.3, 0.5 (JSD), 1 (reverse KL); temperature 1 and
0.7 (GKD's loss is called with a temperature here: its trainer calls it with 1.0). Each row's gradient is that of
the student's every weight. Exit 1 on a difference beyond float tolerance.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_crosscheck import grads, load, rel_grad_diff  # noqa: E402
from grpo_crosscheck import Engine  # noqa: E402

RECORDS = [("把这句话翻译成英文。", "春眠不觉晓", "Spring sleep knows no dawn."),
           ("床前明月光的下一句是什么？", "", "疑是地上霜。"),
           ("续写诗句", "白日依山尽", "黄河入海流。欲穷千里目，更上一层楼。"),
           ("大语言模型是什么？", "", "大语言模型在语料上预训练，可以理解中文。")]
SETTINGS = [(beta, temperature) for beta in (0.0, 0.3, 0.5, 1.0) for temperature in (1.0, 0.7)]


def build(work: Path) -> tuple[Path, Path]:
    from safetensors.torch import load_file, save_file

    from engine.tiny import make_tiny_model, make_tiny_tokenizer

    tok = make_tiny_tokenizer(work / "tok")
    student = make_tiny_model(work / "student", tok, hidden=32, layers=2, heads=4, seed=2)
    teacher = make_tiny_model(work / "teacher", tok, hidden=48, layers=3, heads=4, seed=5)
    weights = load_file(str(teacher / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 6
    save_file(weights, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    return student, teacher


def rows_of(work: Path, student_dir: Path, teacher_dir: Path) -> dict:
    """{"data": the records' rows, "own": the student's sampled answers to their prompts}."""
    import torch
    from transformers import AutoTokenizer

    from sft.collate import SFTCollator
    from sft.data import Conversation, Turn
    from sft.templates import encode_conversation, make_spec, pad_token_id

    tok = AutoTokenizer.from_pretrained(str(work / "tok"))
    spec = make_spec("chinese-alpaca-2", tok)
    encoded = [encode_conversation(Conversation((Turn(q, a, i),)), tok, spec) for q, i, a in RECORDS]
    data = SFTCollator(pad_token_id=pad_token_id(tok))([{"input_ids": torch.tensor(ids), "labels": torch.tensor(lab)}
                                                        for ids, lab in encoded])
    engine, objective = ours(work, student_dir, teacher_dir, 0.5, 1.0, fused=True)
    own, _ = objective.student_answers(engine, data, torch.device("cpu"), seed=11)
    return {"data": data, "own": own}


def ours(work: Path, student_dir: Path, teacher_dir: Path, beta: float, temperature: float, fused: bool):
    import torch
    from transformers import AutoTokenizer

    from engine.distill import DistillObjective
    from engine.grpo_reference import FrozenCopy
    from engine.loss import install_fused_head
    from engine.sampling import Sampler
    from sft.templates import make_spec, pad_token_id, stop_ids

    tok = AutoTokenizer.from_pretrained(str(work / "tok"))
    spec = make_spec("chinese-alpaca-2", tok)
    student, teacher = load(student_dir), load(teacher_dir)
    if fused:
        install_fused_head(student, chunk_tokens=7)
    objective = DistillObjective(teacher=FrozenCopy(lambda ds_config: (teacher, None)),
                                 sampler=Sampler(stop_ids(tok, spec), pad_token_id(tok), 12, temperature),
                                 beta=beta, lmbda=0.5, temperature=temperature, seed=3, chunk_tokens=7)
    engine = Engine(student)
    with contextlib.redirect_stdout(io.StringIO()):  # its log line, once per row here
        objective.prepare(engine, {}, None, 2, work, False, None, torch.device("cpu"))
    return engine, objective


def ours_loss(work, student_dir, teacher_dir, rows, beta, temperature, fused) -> tuple[float, dict]:
    import torch

    engine, objective = ours(work, student_dir, teacher_dir, beta, temperature, fused)
    total, tokens = objective.divergence(engine, rows, torch.device("cpu"))
    loss = total / tokens
    loss.backward()
    return float(loss.detach()), grads(engine.module)


def gkd_loss(student_dir, teacher_dir, rows, beta, temperature) -> tuple[float, dict]:
    import torch
    from trl.experimental.gkd import GKDTrainer

    student, teacher = load(student_dir), load(teacher_dir)
    inputs = {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]}
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits
    logits = student(**inputs).logits
    loss = GKDTrainer.generalized_jsd_loss(logits[:, :-1], teacher_logits[:, :-1], labels=rows["labels"][:, 1:],
                                           beta=beta, temperature=temperature)
    loss.backward()
    return float(loss.detach()), grads(student)


def chunked_loss(student_dir, teacher_dir, rows, beta, temperature) -> tuple[float, dict]:
    import torch
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    student, teacher = load(student_dir), load(teacher_dir)
    inputs = {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]}
    with torch.no_grad():
        teacher_hidden = teacher.model(**inputs).last_hidden_state[:, :-1]
    hidden = student.model(**inputs).last_hidden_state[:, :-1]
    mask = (rows["labels"][:, 1:] != -100).long()
    loss, _, _ = _chunked_divergence_loss(hidden, teacher_hidden, student.lm_head.weight, teacher.lm_head.weight,
                                          mask, beta, temperature=temperature)
    loss.backward()
    return float(loss.detach()), grads(student)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import trl

    args.work.mkdir(parents=True, exist_ok=True)
    student_dir, teacher_dir = build(args.work)
    rows = rows_of(args.work, student_dir, teacher_dir)
    tokens = {name: int((r["labels"] != -100).sum()) for name, r in rows.items()}
    print(f"trl {trl.__version__}; rows: {len(rows['data']['input_ids'])} records' answers ({tokens['data']} tokens), "
          f"the student's answers to their prompts ({tokens['own']} tokens)")
    print(f"{'beta':>5} {'T':>4} {'rows':>5} {'ours (fused)':>13} {'ours (full)':>12} {'TRL GKD':>12} "
          f"{'TRL chunked':>12} {'loss diff':>10} {'grad diff':>10}")
    worst_loss = worst_grad = 0.0
    for beta, temperature in SETTINGS:
        for name, r in rows.items():
            fused, fused_g = ours_loss(args.work, student_dir, teacher_dir, r, beta, temperature, True)
            full, full_g = ours_loss(args.work, student_dir, teacher_dir, r, beta, temperature, False)
            gkd, gkd_g = gkd_loss(student_dir, teacher_dir, r, beta, temperature)
            tiled, tiled_g = chunked_loss(student_dir, teacher_dir, r, beta, temperature)
            loss_diff = max(abs(x - gkd) / max(abs(gkd), 1e-12) for x in (fused, full, tiled))
            grad_diff = max(rel_grad_diff(gkd_g, g) for g in (fused_g, full_g, tiled_g))
            worst_loss, worst_grad = max(worst_loss, loss_diff), max(worst_grad, grad_diff)
            print(f"{beta:>5} {temperature:>4} {name:>5} {fused:>13.6f} {full:>12.6f} {gkd:>12.6f} {tiled:>12.6f} "
                  f"{loss_diff:>10.1e} {grad_diff:>10.1e}")
    ok = worst_loss < 1e-5 and worst_grad < 1e-4
    # the check of the check: GKDTrainer.compute_loss calls the loss at temperature 1 whatever it samples at
    fused, _ = ours_loss(args.work, student_dir, teacher_dir, rows["own"], 0.5, 0.7, True)
    untempered, _ = gkd_loss(student_dir, teacher_dir, rows["own"], 0.5, 1.0)
    print(f"check of the check: ours at temperature 0.7 {fused:.6f}, TRL GKD's loss at 1.0 (its trainer's call) "
          f"{untempered:.6f}: {abs(fused - untempered) / untempered:.1e} apart")
    print(f"largest relative difference: loss {worst_loss:.1e}, gradient {worst_grad:.1e} -> "
          f"{'the same' if ok else 'DIFFERENT'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
