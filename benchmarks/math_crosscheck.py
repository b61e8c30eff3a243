"""Cross-check ``python -m evaluation math`` against lm-evaluation-harness's GSM8K task, item by item.

    PYTHONPATH=. /tmp/lmeval/bin/python benchmarks/math_crosscheck.py --work runs/math_crosscheck [--items 60]

Needs ``lm-eval`` (tested with 0.4.13) in a separate venv that also sees this project; set it up as
benchmarks/mc_crosscheck.py's docstring says.

What it does: writes GSM8K-layout problems of its own (worked solutions with calculator notes, ``#### n``),
trains a tiny LLaMA on the train split briefly (so it writes the layout), makes every other test problem's
reference the number the model states (after ####, else its last) (a tiny model is rarely right; the readers can only
disagree where answers are), then answers the test split twice, greedily, 3-shot: with ``python -m evaluation math`` (our prompts, batched
generation, numbers read as GRPO's reward reads them) and with lm-eval, running its own ``gsm8k.yaml``
(included as is: prompt, stop words, regexes and metric) on local files, its few-shot sampler ``first_n``
over a train file ordered as our seeded exemplars. Printed: items, identical prompts, identical answers,
and per item whether our ``strict`` agrees with lm-eval's strict-match and our ``accuracy`` with its
flexible-extract; the two accuracies side by side. Everything runs offline on CPU.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

NAMES = ["Tom", "Ann", "Li Lei", "Mia", "Sam", "Wang Fang"]
THINGS = ["apples", "pens", "books", "stamps", "cards"]


def problem(rng: random.Random) -> dict:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 40), rng.randint(2, 9)
    kind = rng.choice(["keep", "add", "sub", "mul"])
    if kind == "keep":  # a tiny model learns to copy a number long before it learns to add
        q, c, op, b = f"{name} has {a} {thing} and gets no more. How many {thing} does {name} have now?", a, "+", 0
    elif kind == "add":
        q, c, op = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b, "+"
    elif kind == "sub":
        a += b
        q, c, op = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?", a - b, "-"
    else:
        q, c, op = f"{name} buys {b} boxes of {a} {thing} each. How many {thing} is that?", a * b, "*"
    worked = f"{name} has {a}{op}{b}=<<{a}{op}{b}={c}>>{c} {thing}.\n#### {c}"
    return {"question": q, "answer": worked}


def write_data(root: Path, items: int, train_items: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    train, test = ([problem(rng) for _ in range(n)] for n in (train_items, items))
    paths = root / "train.jsonl", root / "test.jsonl"
    for path, rows in zip(paths, (train, test)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def make_model(root: Path, train: Path, epochs: int) -> Path:
    """A tiny LLaMA and its tokenizer, trained on the train split in lm-eval's layout."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import DEFAULT_TEXT, make_tiny_model, make_tiny_tokenizer

    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows]
    path = make_tiny_model(root / "model", make_tiny_tokenizer(root / "tok", DEFAULT_TEXT + texts), hidden=64, seed=0)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(texts), 8):
            for text in texts[i:i + 8]:
                ids = torch.tensor([tok(text).input_ids])
                model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(path)
    return path


def with_answers_as_references(test: Path, items: list[dict], out: Path) -> Path:
    """The test file with every other problem's reference made the last number the model wrote for it: a tiny
    model is rarely right, and readers can only disagree about right answers where there are some."""
    import re

    rows = [json.loads(line) for line in test.read_text(encoding="utf-8").splitlines()]
    for n, (row, item) in enumerate(zip(rows, items)):
        text = item["answers"][0]
        numbers = re.findall(r"-?\d+", text.split("####", 1)[1] if "####" in text else text)
        if n % 2 == 0 and numbers:  # the number after the first ####, else the last one written
            row["answer"] = row["answer"].rsplit("####", 1)[0] + f"#### {int(numbers[0 if '####' in text else -1])}"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def ours(model: Path, test: Path, train: Path, shots: int, tokens: int, work: Path) -> dict:
    out = work / f"ours_{test.stem}.json"
    subprocess.run([sys.executable, "-m", "evaluation", "math", "--model", str(model), "--set", f"gsm={test}",
                    "--shots-from", str(train), "--shots", str(shots), "--max-new-tokens", str(tokens),
                    "--batch-size", "4", "--out", str(out), "--no-progress"], check=True)
    return json.loads(out.read_text(encoding="utf-8"))["sets"]["gsm"]


def lm_eval_samples(model: Path, test: Path, train: Path, shots: int, tokens: int, work: Path) -> list[dict]:
    """lm-eval's logged samples of its own gsm8k.yaml on our files; train reordered as our exemplars."""
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from evaluation.math_data import read_math_set
    from evaluation.math_eval import exemplars_for

    pool = [i for i in read_math_set(train).items if i.reasoning]
    first = exemplars_for(pool, shots, 0, None)
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    ordered = [rows[int(e.key) - 1] for e in first]
    (work / "train_ordered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ordered), encoding="utf-8")
    tasks = work / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    gsm8k = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    files = {"train": str(work / "train_ordered.jsonl"), "test": str(test)}
    (tasks / "xc_gsm8k.yaml").write_text(
        f"include: {gsm8k}\ntask: xc_gsm8k\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files: {json.dumps(files)}\nfewshot_config:\n  sampler: first_n\n"
        f"generation_kwargs:\n  until: [\"Question:\", \"</s>\", \"<|im_end|>\"]\n  do_sample: false\n"
        f"  temperature: 0.0\n  max_gen_toks: {tokens}\n", encoding="utf-8")
    out = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32,add_bos_token=True",
                          tasks=["xc_gsm8k"], num_fewshot=shots, batch_size=1, device="cpu", log_samples=True,
                          task_manager=TaskManager(include_path=str(tasks)))
    return sorted(out["samples"]["xc_gsm8k"], key=lambda s: int(s["doc_id"]))


def compare(ours_set: dict, samples: list[dict], tokenizer) -> dict:
    by_filter: dict[int, dict[str, dict]] = {}
    for s in samples:
        by_filter.setdefault(int(s["doc_id"]), {})[s["filter"]] = s
    same_prompt = same_answer = strict_agree = flexible_agree = 0
    theirs_strict = theirs_flexible = 0
    differ: list[dict] = []
    for n, item in enumerate(ours_set["items"]):
        got = by_filter[n]
        strict, flexible = got["strict-match"], got["flexible-extract"]
        args = strict["arguments"]
        context = args[0][0] if isinstance(args[0], (list, tuple)) else args["gen_args_0"]["arg_0"]
        same_prompt += tokenizer(context).input_ids == item["prompt_ids"]
        answer = strict["resps"][0][0]
        same_answer += answer == item["answers"][0]
        theirs_strict += strict["exact_match"]
        theirs_flexible += flexible["exact_match"]
        strict_agree += bool(strict["exact_match"]) == item["strict"][0]
        flexible_agree += bool(flexible["exact_match"]) == item["right"][0]
        if bool(flexible["exact_match"]) != item["right"][0]:
            differ.append({"key": item["key"], "reference": item["reference"], "answer": answer,
                           "ours": item["numbers"][0], "lm_eval_flexible": flexible["filtered_resps"][0]})
    n = len(ours_set["items"])
    return {"items": n, "same_prompt": same_prompt, "same_answer": same_answer, "strict_agree": strict_agree,
            "flexible_agree": flexible_agree, "ours_strict": ours_set["strict"], "lm_eval_strict": 100 * theirs_strict / n,
            "ours_accuracy": ours_set["accuracy"], "lm_eval_flexible": 100 * theirs_flexible / n,
            "flexible_differs": differ}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/math_crosscheck")
    p.add_argument("--items", type=int, default=60, help="test problems")
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-items", type=int, default=200, help="problems the tiny model is trained on")
    p.add_argument("--max-new-tokens", type=int, default=40)
    args = p.parse_args()
    from transformers import AutoTokenizer

    work = Path(args.work)
    train, test = write_data(work / "data", args.items, args.train_items)
    model = make_model(work, train, args.epochs)
    first = ours(model, test, train, args.shots, args.max_new_tokens, work)
    test = with_answers_as_references(test, first["items"], work / "data" / "test_own.jsonl")
    mine = ours(model, test, train, args.shots, args.max_new_tokens, work)
    from evaluation.math_data import read_math_set
    from evaluation.math_eval import build_prompts

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = build_prompts(tokenizer, read_math_set(test), [i for i in read_math_set(train).items if i.reasoning],
                            False, args.shots, 0, 10**6, False)
    for item, prompt in zip(mine["items"], prompts):
        item["prompt_ids"] = prompt.ids
    line = compare(mine, lm_eval_samples(model, test, train, args.shots, args.max_new_tokens, work), tokenizer)
    print(json.dumps(line))
    (work / "crosscheck.json").write_text(json.dumps(line, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
