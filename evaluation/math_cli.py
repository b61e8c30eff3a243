"""Math word problems (GSM8K, CMATH, MGSM, your own) by chain-of-thought generation: accuracy per set.

    python -m evaluation math --model outputs/pt-7b-merged --set gsm8k=data/gsm8k/test.jsonl \
        --shots-from data/gsm8k/train.jsonl --out runs/math.json [--set cmath=data/cmath/test.jsonl] \
        [--set mgsm_zh=data/mgsm/mgsm_zh.tsv] [--shots 5] [--chat] [--only class=math] [--max-items 500] \
        [--samples 8 --temperature 0.7] [--max-new-tokens 512] [--device cuda] [--dtype bfloat16] \
        [--batch-size 16] [--compare runs/math_base.json] [--server http://127.0.0.1:8000/v1 --workers 16] \
        [--contamination runs/contamination.keys.json]

A base model continues worked exemplars (GSM8K's layout in English, as lm-evaluation-harness's gsm8k task;
问题/解答/答案 in Chinese); ``--chat`` asks in the model's chat template. Each answer's number is read as
GRPO's ``math`` reward reads it and compared exactly with the reference's. ``--samples K`` samples K
answers per item (seeded by the item: a rerun asks the same) and adds majority voting and pass@K.
``--compare`` puts another model's results on the same items beside these: what continued pretraining
made it forget, or what GRPO gained, item by item. Every file is checked and every prompt built before
the model loads; the results JSON holds each item's prompt size, answers and the numbers read off them.
``--server`` generates on an OpenAI-compatible server serving ``--model`` (``vllm serve DIR``), prompts as
token ids; replies are kept in OUT.calls.jsonl, so a stopped run resumes. ``--contamination`` (a report of
``evaluation contamination MANIFEST --math NAME=FILE``) scores the problems the training data holds apart.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems

from .generated_runs import add_run_arguments, named_sets, range_problems, sampling_problems
from .math_eval import ANSWER_ROOM, MAX_SHOTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder (weights + tokenizer)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILE",
                        help="GSM8K/CMATH-style .jsonl or .json, or MGSM .tsv; repeatable")
    parser.add_argument("--only", action="append", default=[], metavar="FIELD=VALUE",
                        help="score only records with this field value (BELLE's eval set: class=math); repeatable")
    parser.add_argument("--shots", type=int, default=5, help=f"worked exemplars before the question (0-{MAX_SHOTS})")
    parser.add_argument("--shots-from", default=None, metavar="FILE",
                        help="take exemplars from this file (GSM8K's train split); default: the set itself")
    parser.add_argument("--chat", action="store_true", help="ask in user turns of the model's chat template")
    parser.add_argument("--max-items", type=int, default=None, help="score a seeded sample of each set")
    parser.add_argument("--seed", type=int, default=0, help="chooses exemplars, the sample and the sampled answers")
    parser.add_argument("--samples", type=int, default=1, help="answers per item (> 1: sampled, majority vote)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 (greedy) with one sample, default 0.7 with several")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=ANSWER_ROOM)
    parser.add_argument("--max-length", type=int, default=None, help="prompt + answer tokens (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    add_run_arguments(parser, "a report of `evaluation contamination --math NAME=FILE` for these sets: accuracy on "
                              "problems in the training data and on clean ones apart")


def _check_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    problems: list[str] = []
    sets = named_sets(args, "set", problems)
    args.only_fields = {}
    for value in args.only:
        field, sep, wanted = value.partition("=")
        if sep and field:
            args.only_fields[field] = wanted
        else:
            problems.append(f"--only {value!r}: expected FIELD=VALUE (e.g. class=math)")
    for flag, path in (("--shots-from", args.shots_from), ("--compare", args.compare),
                       ("--contamination", args.contamination)):
        if path and not Path(path).is_file():
            problems.append(f"{flag} {path}: not a file")
    if args.temperature is None:
        args.temperature = 0.0 if args.samples == 1 else 0.7
    problems += range_problems((("--shots", args.shots, 0, MAX_SHOTS), ("--batch-size", args.batch_size, 1, None),
                                ("--max-new-tokens", args.max_new_tokens, 1, None), ("--samples", args.samples, 1, 64),
                                ("--max-items", args.max_items, 1, None), ("--max-length", args.max_length, 16, None)))
    problems += sampling_problems(args, "answer")
    raise_if_problems("math settings", problems)
    return sets


def _sets(args, sets: list[tuple[str, str]]) -> dict:
    """name -> (MathSet sampled, exemplar pool, pool is the set itself); every file checked first."""
    from .math_data import read_math_set
    from .math_eval import sample_problems

    problems, read = [], {}
    for name, path in sets + ([("--shots-from", args.shots_from)] if args.shots_from else []):
        try:
            read[name] = read_math_set(path, args.only_fields if name != "--shots-from" else None)
        except UserError as e:
            problems.append(str(e))
    raise_if_problems("math sets", problems)
    out = {}
    for name, _ in sets:
        whole, source = read[name], read.get("--shots-from", read[name])
        worked = [i for i in source.items if i.reasoning]
        if args.shots and len(worked) <= args.shots:
            problems.append(f"{source.path}: {len(worked)} items with a worked solution; --shots {args.shots} needs "
                            f"more (--shots-from a file of worked solutions, e.g. GSM8K's train split, or --shots 0)")
        out[name] = (sample_problems(whole, args.max_items, args.seed), worked, source is whole)
    raise_if_problems("math exemplars", problems)
    return out


def run(args: argparse.Namespace) -> int:
    from zhllama.files import write_json_atomic
    from zhllama.model_folder import require_model_folder

    from .generated_runs import before_the_model, tokenizer_and_positions
    from .math_eval import build_prompts, compare_results, table

    sets = _check_args(args)
    require_model_folder(args.model, "--model")
    compare, statuses = before_the_model(args, sets, "math")
    chosen = _sets(args, sets)
    tokenizer, max_length = tokenizer_and_positions(args)
    budget = max_length - args.max_new_tokens
    if budget < 16:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} leaves {budget} of the model's {max_length} positions "
                        "for prompts: lower it (or raise --max-length where the model reads further)")
    prompts, problems = {}, []
    for name, (math_set, pool, same_set) in chosen.items():
        prompts[name] = (math_set, build_prompts(tokenizer, math_set, pool, same_set, args.shots, args.seed, budget,
                                                 args.chat))
        if all(p.ids is None for p in prompts[name][1]):
            problems.append(f"--set {name}: no item fits in {budget} prompt tokens (--max-length, --max-new-tokens)")
    raise_if_problems("math prompts", problems)
    result = _evaluate(args, prompts, tokenizer, max_length, statuses)
    if compare is not None:
        result["compare"] = compare_results(compare, result, args.compare)
    write_json_atomic(args.out, result)
    print(table(result))
    print(f"-> {args.out}")
    return 0


def _evaluate(args, prompts: dict, tokenizer, max_length: int, statuses: dict | None = None) -> dict:
    from zhllama.files import sha256_file
    from zhllama.model_fingerprint import model_fingerprint

    from .math_eval import cut_at_stop, reference_metrics, reference_requests, scored_item, stop_text, summary

    generate, score = _on_server(args) if args.server else _here(args, tokenizer)
    skip = ("model", "out", "no_progress", "compare", "api_key_env", "only_fields", "only", "contamination")
    result = {"task": "math", "model": str(args.model), "model_fingerprint": model_fingerprint(args.model),
              "server": args.server, "max_length": max_length, "contamination_report": args.contamination,
              "settings": {**{k: v for k, v in vars(args).items() if k not in skip}, "only": args.only_fields},
              "sets": {}}
    for name, (math_set, got) in prompts.items():
        stops = stop_text(math_set.language, args.chat)
        # shortest first: a batch pads to its longest prompt
        fits = sorted((i for i, p in enumerate(got) if p.ids is not None), key=lambda i: len(got[i].ids))
        answers: list[list[str] | None] = [None] * len(got)
        for i, texts in zip(fits, generate(name, [got[i] for i in fits], stops)):
            answers[i] = [cut_at_stop(t, stops) for t in texts]
        items = [scored_item(p, a, None if statuses is None else statuses[name]) for p, a in zip(got, answers)]
        reference = {}
        if score is not None:  # the reference solutions read after the prompts: needs the model here
            requests = reference_requests(tokenizer, got, math_set.language, max_length)
            reference = reference_metrics(got, score(name, requests), math_set.language)
            for item, ref in zip(items, reference.pop("items")):
                item.update({k: v for k, v in ref.items() if k != "key"})
        result["sets"][name] = {"file": str(math_set.path), "sha256": sha256_file(math_set.path),
                                "language": math_set.language, "left_out_by_only": math_set.left_out,
                                **summary(items, args.samples), **reference, "items": items}
    return result


def _here(args, tokenizer):
    """Answers from the model loaded here, in batches."""
    from .generated_runs import answers_here, model_here

    model = model_here(args)
    generate = answers_here(model, tokenizer, args, "math")

    def score(name: str, requests: list) -> list:
        from .choice import pad_id_of
        from .math_eval import score_references

        return score_references(model, requests, args.batch_size, args.device, pad_id_of(tokenizer))
    return generate, score


def _on_server(args):
    """Answers from ``/v1/completions`` (generated_runs.server_answers); the reference solutions' likelihood needs
    the model here."""
    from .generated_runs import server_answers
    from .math_eval import sample_seed

    return server_answers(args, "math", sample_seed), None
