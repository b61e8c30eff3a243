"""Cross-check the letter-logit scorer against lm-evaluation-harness (its HF backend), item by item.

    python benchmarks/mc_crosscheck.py --work runs/mc_crosscheck [--items 30] [--shots 0 3]

Needs ``lm-eval`` (tested with 0.4.13), which pulls scikit-learn, nltk, sacrebleu ... so it is not
a project dependency: install it into a separate venv that also sees this project, e.g.
``python -m venv /tmp/lmeval && echo $PWD/.venv/lib/python3.11/site-packages > /tmp/lmeval/lib/python3.11/site-packages/zhllama.pth
&& /tmp/lmeval/bin/pip install lm-eval==0.4.13`` and run this script with ``PYTHONPATH=. /tmp/lmeval/bin/python``.

What it does: writes our own questions in the C-Eval and MMLU layouts (a few subjects, dev
exemplars), trains a tiny LLaMA for a few steps on half of them (so its choices are not uniform
noise), then scores every item twice: with ``evaluation`` (our prompts and scorer) and with
lm-eval, whose prompts are built by lm-eval itself from a local task file per subject (CSV data,
Jinja templates of the same format, dev split as first-n few-shot exemplars, the subject header as
the task description). Printed per benchmark and shot count: items, identical prompts, identical
choices, largest |log-prob difference|. Everything runs offline on CPU.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import zlib
from pathlib import Path

ZH_HEAD = "以下是中国关于{t}考试的单项选择题，请选出其中的正确答案。\n\n"
EN_HEAD = "The following are multiple choice questions (with answers) about {t}.\n\n"
NUM_ZH = "零一二三四五六七八九十"


def _questions(lang: str, n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 5), rng.randint(1, 5)
        right = a + b
        wrong = rng.sample([v for v in range(0, 11) if v != right], 3)
        letter = rng.choice("ABCD")
        opts = wrong[:]
        opts.insert("ABCD".index(letter), right)
        if lang == "zh":
            rows.append([f"{NUM_ZH[a]}加{NUM_ZH[b]}等于几？", *[f"{NUM_ZH[v]}个" for v in opts], letter])
        else:
            rows.append([f"What is {a} plus {b}?", *[f"{v} apples" for v in opts], letter])
    return rows


def write_data(root: Path, items: int) -> dict[str, Path]:
    layouts = {"ceval": ("zh", ["law", "logic", "high_school_physics"]), "mmlu": ("en", ["astronomy", "virology"])}
    out = {}
    for bench, (lang, subjects) in layouts.items():
        for k, subject in enumerate(subjects):
            for split, n in (("dev", 5), ("val", items)):
                path = root / bench / split / f"{subject}_{split}.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                rows = _questions(lang, n, zlib.crc32(f"{bench}/{subject}/{split}".encode()))
                with path.open("w", encoding="utf-8", newline="") as f:
                    w = csv.writer(f)
                    if bench == "ceval":
                        w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                        rows = [[str(i), *r] for i, r in enumerate(rows)]
                    w.writerows(rows)
        out[bench] = root / bench
    return out


def make_model(root: Path, benches: list, steps: int) -> Path:
    """A tiny LLaMA, its tokenizer trained on the prompts, then a few steps on half of the items."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import DEFAULT_TEXT, make_tiny_model, make_tiny_tokenizer
    from evaluation.choice import bench_prompts
    from evaluation.prompts import continuations

    texts, train = [], []
    for bench in benches:
        for i, (prompt, item) in enumerate(zip(bench_prompts(bench), bench.items)):
            target = continuations(bench.name)["ABCD".index(item.answer)]
            texts.append(prompt + target)
            if i % 2 == 0:
                train.append(prompt + target)
    tok_dir = make_tiny_tokenizer(root / "tok", DEFAULT_TEXT + texts)
    path = make_tiny_model(root / "model", tok_dir, hidden=64, seed=0)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        for text in train:
            ids = torch.tensor([tok(text).input_ids])
            labels = torch.full_like(ids, -100)
            labels[0, -1] = ids[0, -1]
            model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return path


def _task_yaml(name: str, bench: str, subject: str, data: Path) -> str:
    from evaluation.prompts import subject_title

    head = (ZH_HEAD if bench == "ceval" else EN_HEAD).format(t=subject_title(bench, subject))
    cue, delim = ("答案：", "") if bench == "ceval" else ("Answer:", " ")
    text = "{{question}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\n" + cue
    files = {s: str(data / s / f"{subject}_{s}.csv") for s in ("dev", "val")}
    columns = "" if bench == "ceval" else "  column_names: [question, A, B, C, D, answer]\n"
    return (f"task: {name}\ndataset_path: csv\ndataset_kwargs:\n  data_files: {json.dumps(files)}\n{columns}"
            f"test_split: val\nfewshot_split: dev\nfewshot_config:\n  sampler: first_n\n"
            f"output_type: multiple_choice\ndescription: {json.dumps(head, ensure_ascii=False)}\n"
            f"doc_to_text: \"{text}\"\ndoc_to_choice: [\"A\", \"B\", \"C\", \"D\"]\n"
            f"doc_to_target: \"{{{{['A', 'B', 'C', 'D'].index(answer)}}}}\"\n"
            f"target_delimiter: \"{delim}\"\nfewshot_delimiter: \"\\n\\n\"\nmetric_list:\n  - metric: acc\n")


def run_lm_eval(model: Path, bench: str, data: Path, subjects: list[str], shots: int, work: Path) -> dict:
    """{(subject, doc_id): (context, [loglik A-D])} from lm-eval's logged samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task_dir = work / "tasks" / f"{bench}_{shots}"
    task_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for subject in subjects:
        name = f"xc_{bench}_{subject}_{shots}"
        (task_dir / f"{name}.yaml").write_text(_task_yaml(name, bench, subject, data), encoding="utf-8")
        names[name] = subject
    out = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32,add_bos_token=True",
                          tasks=list(names), num_fewshot=shots, batch_size=4, device="cpu", log_samples=True,
                          task_manager=TaskManager(include_path=str(task_dir)))
    got = {}
    for name, subject in names.items():
        for sample in out["samples"][name]:
            context = sample["arguments"][0][0] if isinstance(sample["arguments"][0], (list, tuple)) else \
                sample["arguments"]["gen_args_0"]["arg_0"]
            lls = [float(r[0][0]) if isinstance(r[0], (list, tuple)) else float(r[0]) for r in sample["resps"]]
            got[(subject, int(sample["doc_id"]))] = (context, lls)
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/mc_crosscheck")
    p.add_argument("--items", type=int, default=30, help="questions per subject")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 3])
    p.add_argument("--train-steps", type=int, default=30)
    args = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.benchmarks import load_benchmark
    from evaluation.choice import bench_prompts, evaluate_benchmark

    work = Path(args.work)
    data = write_data(work / "data", args.items)
    model_dir = make_model(work, [load_benchmark(b, d, "val") for b, d in data.items()], args.train_steps)
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    summary = []
    for bench, folder in data.items():
        for shots in args.shots:
            b = load_benchmark(bench, folder, "val", shots=shots)
            ours_summary, ours = evaluate_benchmark(model, tok, b, batch_size=4, device="cpu")
            theirs = run_lm_eval(model_dir, bench, folder, b.subjects, shots, work)
            rows, same_prompt, same_choice, worst = 0, 0, 0, 0.0
            index: dict[str, int] = {}
            for item, prompt, mine in zip(b.items, bench_prompts(b), ours):
                k = index[item.subject] = index.get(item.subject, -1) + 1
                context, lls = theirs[(item.subject, k)]
                rows += 1
                same_prompt += context == prompt
                same_choice += "ABCD"[max(range(4), key=lambda j: (lls[j], -j))] == mine["pred"]
                worst = max(worst, max(abs(a - c) for a, c in zip(lls, mine["logprobs"])))
            line = {"benchmark": bench, "shots": shots, "items": rows, "same_prompt": same_prompt,
                    "same_choice": same_choice, "max_abs_logprob_diff": worst, "our_accuracy": ours_summary["accuracy"]}
            summary.append(line)
            print(json.dumps(line), flush=True)
    (work / "crosscheck.json").write_text(json.dumps(summary, indent=1))
    total = sum(s["items"] for s in summary)
    print(f"agreement: {sum(s['same_choice'] for s in summary)}/{total} choices, "
          f"{sum(s['same_prompt'] for s in summary)}/{total} prompts identical, "
          f"max |log-prob diff| {max(s['max_abs_logprob_diff'] for s in summary):.2e}")


if __name__ == "__main__":
    main()
