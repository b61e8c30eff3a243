"""Tiny benchmark folders in the official C-Eval / CMMLU / MMLU layouts, with our own questions."""
from __future__ import annotations

import csv
from pathlib import Path

# (question, A, B, C, D, answer)
ZH = [
    ("一加一等于几？", "一", "二", "三", "四", "B"),
    ("中国的首都是哪里？", "北京", "上海", "广州", "深圳", "A"),
    ("水在标准大气压下的沸点是多少摄氏度？", "0", "50", "100", "200", "C"),
    ("一年有几个季节？", "一个", "两个", "三个", "四个", "D"),
    ("太阳从哪个方向升起？", "西", "东", "南", "北", "B"),
    ("三角形有几条边？", "三", "四", "五", "六", "A"),
]
EN = [
    ("What is two plus two?", "three", "five", "four", "six", "C"),
    ("Which animal barks?", "dog", "cat", "fish", "bird", "A"),
    ("How many days are in a week?", "five", "six", "eight", "seven", "D"),
    ("What color is the clear daytime sky?", "green", "blue", "red", "black", "B"),
]


def _write(path: Path, header: list[str] | None, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def write_ceval(root: Path, splits: dict[str, dict[str, list[tuple]]]) -> Path:
    for split, subjects in splits.items():
        for subject, qs in subjects.items():
            header = ["id", "question", "A", "B", "C", "D", "answer"] + (["explanation"] if split == "dev" else [])
            rows = [[str(i), *q] + (["因为如此。"] if split == "dev" else []) for i, q in enumerate(qs)]
            _write(root / split / f"{subject}_{split}.csv", header, rows)
    return root


def write_cmmlu(root: Path, splits: dict[str, dict[str, list[tuple]]]) -> Path:
    for split, subjects in splits.items():
        for subject, qs in subjects.items():
            _write(root / split / f"{subject}.csv", ["", "Question", "A", "B", "C", "D", "Answer"],
                   [[str(i), *q] for i, q in enumerate(qs)])
    return root


def write_mmlu(root: Path, splits: dict[str, dict[str, list[tuple]]]) -> Path:
    for split, subjects in splits.items():
        for subject, qs in subjects.items():
            _write(root / split / f"{subject}_{split}.csv", None, [list(q) for q in qs])
    return root


def small_ceval(root: Path) -> Path:
    """Three subjects: computer_network (STEM), law (Humanities), advanced_mathematics (STEM, Hard)."""
    return write_ceval(root, {
        "dev": {"computer_network": ZH[4:6], "law": ZH[4:6], "advanced_mathematics": ZH[4:6]},
        "val": {"computer_network": ZH[0:2], "law": ZH[2:4], "advanced_mathematics": ZH[0:1]},
    })


def tiny_model_knowing(out: Path, benches: list, steps: int = 120, seed: int = 0) -> Path:
    """A tiny LLaMA trained to write each benchmark item's answer letter after its zero-shot prompt.

    The tokenizer is trained on the prompts too, so " A" and "A" after the cue are single pieces.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import DEFAULT_TEXT, make_tiny_model, make_tiny_tokenizer
    from evaluation.choice import bench_prompts
    from evaluation.prompts import continuations

    prompts, targets = [], []
    for bench in benches:
        for prompt, item in zip(bench_prompts(bench), bench.items):
            prompts.append(prompt)
            targets.append(continuations(bench.name)["ABCD".index(item.answer)])
    tok_dir = make_tiny_tokenizer(out / "tok", DEFAULT_TEXT + [p + t for p, t in zip(prompts, targets)] * 5)
    make_tiny_model(out / "model", tok_dir, seed=seed)
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seqs = [tok(p + t).input_ids for p, t in zip(prompts, targets)]
    for _ in range(steps):
        for ids in seqs:
            x = torch.tensor([ids])
            labels = torch.full_like(x, -100)
            labels[0, -1] = ids[-1]  # only the answer letter
            loss = model(input_ids=x, labels=labels).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out / "model")
    return out / "model"


def contamination_report(root: Path, ceval: Path) -> Path:
    """A `python -m evaluation contamination` report on ``ceval`` (small_ceval) in which the val item
    ZH[2] is contaminated: its question is in the one-document corpus. Returns the report's path."""
    import argparse

    from helpers_prepare import write_lines, write_manifest

    from evaluation import contamination_cli

    corpus = write_lines(root / "web.txt", ["今天去公园散步", f"考试题：{ZH[2][0]}答案是一百"])
    keys = root / "contamination.keys"
    assert contamination_cli.run(argparse.Namespace(
        manifest=str(write_manifest(root / "web.yaml", [{"name": "web", "file": corpus}])),
        benchmark=[f"ceval={ceval}"], eval_manifest=[], reading=[], math=[], out=str(keys), workers=1, ngram=13, min_units=5,
        max_items=5, min_coverage=0.5, t2s=False)) == 0
    return root / "contamination.keys.json"
