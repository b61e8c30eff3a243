"""Reading comprehension (CMRC 2018, DRCD, SQuAD) by generation: exact match and F1 per set.

    python -m evaluation reading --model outputs/zh_sft_merged --set cmrc=data/cmrc2018_dev.json \
        --out runs/reading.json [--set drcd=data/DRCD_dev.json] [--shots 3] [--shots-from data/cmrc2018_trial.json] \
        [--chat] [--max-questions 500] [--seed 0] [--metric auto|cmrc|squad] [--max-new-tokens 64] \
        [--device cuda] [--dtype bfloat16] [--batch-size 16] [--compare runs/reading_base.json] \
        [--haystack-tokens 16000 --depths 0,0.5,1] [--server http://127.0.0.1:8000/v1 --workers 16]

Each set is a file in SQuAD's JSON layout, or JSON Lines (``.jsonl``) of ``{"id", "title", "context",
"question", "answers"}``. The model answers by greedy generation (to the first line
break); the answer is scored with the CMRC 2018 metric for Chinese sets (also DRCD's) and SQuAD v1.1's
for English ones, in percent like the official scripts. ``--compare`` puts the numbers of another
model's results on the same questions beside these: the change, and the questions it now answers
exactly that the other did not (gained) and the reverse (lost). ``--haystack-tokens`` makes it a
long-context test: each question's paragraph hidden among other articles' paragraphs, at each
``--depths``, the prompt filled to that many tokens (scores per depth). Every file is checked and every
prompt built before the model loads; the results JSON holds each question's prompt size, output,
prediction and scores. ``--server`` generates on an OpenAI-compatible server that serves ``--model``
(``vllm serve DIR``: long haystacks and large models), the prompts sent as token ids; replies are kept
in OUT.calls.jsonl, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems

from .generated_runs import add_run_arguments, named_sets, range_problems
from .reading import ANSWER_ROOM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder (weights + tokenizer)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILE",
                        help="a SQuAD-layout JSON file (CMRC 2018, DRCD, SQuAD) or .jsonl; repeatable")
    parser.add_argument("--shots", type=int, default=3, help="solved exemplars before the question (0-8)")
    parser.add_argument("--shots-from", default=None, metavar="FILE",
                        help="take exemplars from this file (default: the set itself, other articles)")
    parser.add_argument("--chat", action="store_true", help="ask in a user turn of the model's chat template")
    parser.add_argument("--max-questions", type=int, default=None, help="score a seeded sample of each set")
    parser.add_argument("--seed", type=int, default=0, help="chooses exemplars and the sample")
    parser.add_argument("--t2s", action="store_true",
                        help="read every set in Simplified characters (OpenCC t2s: DRCD for a Simplified model)")
    parser.add_argument("--metric", default="auto", choices=["auto", "cmrc", "squad"],
                        help="auto: cmrc for a Chinese set, squad for an English one")
    parser.add_argument("--max-new-tokens", type=int, default=ANSWER_ROOM)
    parser.add_argument("--max-length", type=int, default=None, help="prompt + answer tokens (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--haystack-tokens", type=int, default=None, metavar="N",
                        help="hide each question's paragraph among other articles' paragraphs, to N prompt tokens")
    parser.add_argument("--depths", default="0,0.5,1",
                        help="with --haystack-tokens: where the question's paragraph sits (0 = first, 1 = last)")
    add_run_arguments(parser, "a report of `evaluation contamination --reading NAME=FILE` for these sets: "
                              "EM/F1 on clean and contaminated passages apart")


def _check_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    problems: list[str] = []
    sets = named_sets(args, "reading set", problems)
    if args.shots_from and not Path(args.shots_from).is_file():
        problems.append(f"--shots-from {args.shots_from}: not a file")
    problems += range_problems((("--shots", args.shots, 0, 8), ("--batch-size", args.batch_size, 1, None),
                                ("--max-new-tokens", args.max_new_tokens, 1, None),
                                ("--max-questions", args.max_questions, 1, None), ("--max-length", args.max_length, 16, None)))
    if args.haystack_tokens is not None:
        from .long_context_cli import parse_depths

        args.depth_list = parse_depths(args.depths, problems)
        if args.haystack_tokens < 64:
            problems.append(f"--haystack-tokens must be >= 64, got {args.haystack_tokens}")
    if args.server:
        from zhllama.openai_client import check_api_key_env, check_url

        problems += check_url("--server", args.server) + check_api_key_env(args.api_key_env)
        if args.workers < 1:
            problems.append(f"--workers must be >= 1, got {args.workers}")
    if args.contamination and not Path(args.contamination).is_file():
        problems.append(f"--contamination {args.contamination}: not a file")
    if args.compare and not Path(args.compare).is_file():
        problems.append(f"--compare {args.compare}: not a file")
    raise_if_problems("reading settings", problems)
    return sets


def _sets(args, sets: list[tuple[str, str]]) -> dict:
    """name -> (ReadingSet sampled, exemplar pool, pool is the set itself, metric, the whole set); all files
    checked first."""
    from .reading import exemplar_pool, sample_questions
    from .reading_data import read_reading_set, simplified

    problems, read = [], {}
    for name, path in sets + ([("--shots-from", args.shots_from)] if args.shots_from else []):
        try:
            read[name] = simplified(read_reading_set(path)) if args.t2s else read_reading_set(path)
        except UserError as e:
            problems.append(str(e))
    raise_if_problems("reading sets", problems)
    out = {}
    for name, _ in sets:
        whole = read[name]
        source = read.get("--shots-from", whole)
        pool = exemplar_pool(source)
        if args.shots and len({a for a, _ in pool}) <= args.shots:
            problems.append(f"{source.path}: {len(pool)} usable exemplars from {len({a for a, _ in pool})} articles; "
                            f"--shots {args.shots} needs more than {args.shots} articles")
        metric = args.metric if args.metric != "auto" else ("cmrc" if whole.language == "zh" else "squad")
        out[name] = (sample_questions(whole, args.max_questions, args.seed), pool, source is whole, metric, whole)
    raise_if_problems("reading exemplars", problems)
    return out


def run(args: argparse.Namespace) -> int:
    from zhllama.model_folder import require_model_folder

    from .generated_runs import before_the_model, tokenizer_and_positions

    sets = _check_args(args)
    require_model_folder(args.model, "--model")
    compare, statuses = before_the_model(args, sets, "reading")
    tokenizer, max_length = tokenizer_and_positions(args)
    budget = max_length - args.max_new_tokens
    if args.haystack_tokens and args.haystack_tokens > budget:
        raise UserError(f"--haystack-tokens {args.haystack_tokens}: more than the {budget} prompt tokens the model "
                        f"covers ({max_length} positions less --max-new-tokens; --max-length reads past them)")
    prompts = _prompts(args, _sets(args, sets), tokenizer, budget)
    result = _evaluate(args, prompts, tokenizer, max_length, statuses)
    if compare is not None:
        from .reading_compare import compare_results

        result["compare"] = compare_results(compare, result, args.compare)
    from zhllama.files import write_json_atomic

    write_json_atomic(args.out, result)
    from .reading_compare import table

    print(table(result))
    print(f"-> {args.out}")
    return 0


def _prompts(args, sets: dict, tokenizer, budget: int) -> dict:
    from .reading import build_prompts

    out, problems = {}, []
    for name, (reading, pool, same_set, metric, whole) in sets.items():
        haystack = None
        if args.haystack_tokens:
            from .reading_haystack import Haystack

            # other articles' paragraphs from the whole set, not only the sampled questions'
            haystack = Haystack.of(whole, args.haystack_tokens, args.depth_list, tokenizer)
        prompts = build_prompts(tokenizer, reading, pool, same_set, args.shots, args.seed, budget, args.chat, haystack)
        if all(p.ids is None for p in prompts):
            problems.append(f"--set {name}: no question fits in {budget} prompt tokens (--max-length, --max-new-tokens)")
        elif haystack is not None:
            sizes = [len(p.ids) for p in prompts if p.ids is not None]
            if sum(sizes) < 0.9 * args.haystack_tokens * len(sizes):
                print(f"set {name}: its paragraphs fill haystacks to {sum(sizes) / len(sizes):,.0f} tokens on average, "
                      f"not {args.haystack_tokens:,} (too few other articles)")
        out[name] = (reading, metric, prompts)
    raise_if_problems("reading prompts", problems)
    return out


def _evaluate(args, prompts: dict, tokenizer, max_length: int, statuses: dict | None = None) -> dict:
    from zhllama.files import sha256_file
    from zhllama.model_fingerprint import model_fingerprint

    from .reading import answer_requests, reference_metrics, scored_items, summary

    generate, score = _on_server(args) if args.server else _here(args, tokenizer)
    result = {"model": str(args.model), "model_fingerprint": model_fingerprint(args.model), "server": args.server,
              "max_length": max_length,
              "settings": {k: v for k, v in vars(args).items()
                           if k not in ("model", "out", "no_progress", "compare", "depth_list", "api_key_env")},
              "contamination_report": args.contamination, "sets": {}}
    for name, (reading, metric, got) in prompts.items():
        # shortest first: a batch pads to its longest prompt (answers equal one at a time, tested)
        fits = sorted((i for i, p in enumerate(got) if p.ids is not None), key=lambda i: len(got[i].ids))
        answers: list[str | None] = [None] * len(got)
        for i, text in zip(fits, generate(name, [got[i].ids for i in fits])):
            answers[i] = text
        reference = None  # the reference answers read after the prompts: needs the model here
        if score is not None:
            scores = score(name, answer_requests(tokenizer, got, reading.language, args.chat))
            reference = reference_metrics(got, scores, reading.language, args.chat)
        items = scored_items(got, answers, reading.language, metric, None if statuses is None else statuses[name],
                             reference)
        totals = {k: v for k, v in (reference or {}).items() if k != "items"}
        result["sets"][name] = {"file": str(reading.path), "sha256": sha256_file(reading.path),
                                "language": reading.language, "metric": metric, "unanswerable_skipped": reading.unanswerable,
                                **summary(items), **totals, "items": items}
    return result


def _here(args, tokenizer):
    """Greedy answers from the model loaded here, in batches."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from .answer_scorer import score_answers
    from .choice import pad_id_of
    from .long_context import greedy_answers

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()

    def generate(name: str, prompts: list[list[int]]) -> list[str]:
        with tqdm(total=len(prompts), desc=f"reading {name}", disable=args.no_progress) as bar:
            return greedy_answers(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, args.device, bar,
                                  stop=["\n"])

    def score(name: str, requests: list) -> list:
        return score_answers(model, requests, args.batch_size, args.device, pad_id_of(tokenizer))
    return generate, score


def _on_server(args):
    """Greedy answers from ``/v1/completions``, every reply kept in OUT.calls.jsonl (a rerun resumes)."""
    from zhllama.openai_client import Endpoint, api_key, complete_all

    endpoint = Endpoint(args.server, args.server_model or str(args.model), api_key(args.api_key_env))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def generate(name: str, prompts: list[list[int]]) -> list[str]:
        requests = [{"prompt": p, "max_tokens": args.max_new_tokens, "temperature": 0.0, "stop": ["\n"],
                     "skip_special_tokens": True} for p in prompts]
        replies = complete_all(endpoint, requests, out.with_name(out.name + ".calls.jsonl"), args.workers,
                               f"reading {name}", not args.no_progress)
        return [r["text"] for r in replies]
    return generate, None  # the reference answers' likelihood needs the model here
