"""Answer a file of instructions in batches with a model's saved template; score per class.

    python -m sft generate --model DIR --input FILE --out FILE.jsonl [--batch-size 8] [--limit N]
        [--max-new-tokens 512] [--do-sample --temperature 0.7 --top-p 0.9 --top-k 40] [--repetition-penalty 1.1]
    # the same on a server: vllm serve DIR   (sft/generate_remote.py: the prompts go as token ids)
    python -m sft generate --model DIR --input FILE --out FILE.jsonl --server http://127.0.0.1:8000/v1

FILE: BELLE's eval set (JSON Lines of question/std_answer/class, e.g.
../shared/data/sft/belle_eval_set.json), Alpaca records (output, when present, is the reference)
or conversations (the last assistant message is the reference). FILE.jsonl gets one row per
record: id, class, question, input, std_answer, prediction, rouge_l_f1_char, template, and the
answer's health: finished, repetition, looping, language_switch (sft/answer_health.py) — what
`python -m evaluation judge` reads. FILE.scores.json gets the mean character-level ROUGE-L F1 per
class where a reference exists (why that metric: sft/generate.py) and, per class, the share of
answers unfinished, looping or in the wrong language, with their mean length.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .templates import TEMPLATE_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder written by `sft export` (or `sft train` mode=full)")
    parser.add_argument("--input", required=True, help="BELLE eval / Alpaca / conversations file (JSON or JSON Lines)")
    parser.add_argument("--out", required=True, help="predictions file to write (JSON Lines)")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, default=None, help="override the saved template")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N records")
    parser.add_argument("--max-prompt-tokens", type=int, default=None, help="keep only the last N prompt tokens")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    server = parser.add_argument_group("generate on an OpenAI-compatible server instead (vLLM, TGI, sft serve)")
    server.add_argument("--server", default=None, metavar="URL", help="its API base, e.g. http://127.0.0.1:8000/v1; "
                        "--model then only gives the tokenizer and template")
    server.add_argument("--server-model", default=None, help="the name it serves the model under (default: --model "
                        "as given, vLLM's name for `vllm serve DIR`)")
    server.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding its API key")
    server.add_argument("--workers", type=int, default=32, help="requests in flight at once (32)")


def run(args: argparse.Namespace) -> int:
    from zhllama.errors import UserError
    from zhllama.files import write_json_atomic

    from .data import load_prompts
    from .answer_health import health_by_class, health_table
    from .generate import (Sampling, generate_all, load_model, prediction_records, score_by_class,
                           settings_dict, write_jsonl)

    if args.batch_size < 1 or args.max_new_tokens < 1 or args.workers < 1:
        raise UserError("--batch-size, --max-new-tokens and --workers must be >= 1")
    if args.server:
        from zhllama.errors import raise_if_problems
        from zhllama.openai_client import check_api_key_env, check_url

        raise_if_problems("--server settings", check_url("--server", args.server) + check_api_key_env(args.api_key_env))
    items = load_prompts(args.input)  # validate the file before loading a model
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise UserError(f"{args.input}: no records to answer")
    sampling = Sampling(args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.top_k,
                        args.repetition_penalty, args.seed)
    if args.server:
        tokenizer, spec, answers, finished = _generate_on_server(args, items, sampling)
    else:
        model, tokenizer, spec = load_model(args.model, args.template, args.dtype)
        answers, finished = generate_all(model, tokenizer, spec, items, sampling, args.batch_size, args.max_prompt_tokens)
    rows = prediction_records(items, answers, finished, spec)
    write_jsonl(args.out, rows)
    scores = score_by_class(items, answers)
    health = health_by_class(rows)
    out = Path(args.out)
    scores_path = out.with_name(out.name.removesuffix(".jsonl") + ".scores.json")
    write_json_atomic(scores_path, {"metric": "character-level ROUGE-L F1 (mean over records with a reference)",
                                    "model": str(args.model), "server": args.server, "input": str(args.input),
                                    "records": len(items),
                                    "template": spec.name, "sampling": settings_dict(sampling), "by_class": scores,
                                    "health": health})
    print(json.dumps(scores, ensure_ascii=False, indent=2))
    print(health_table(health))
    print(f"wrote {out} ({len(items)} predictions) and {scores_path}")
    return 0


def _generate_on_server(args: argparse.Namespace, items, sampling):
    from zhllama.openai_client import Endpoint, api_key

    from .generate import encode_prompts, load_tokenizer_and_template
    from .generate_remote import generate_remote
    from .templates import stop_ids

    tokenizer, spec = load_tokenizer_and_template(args.model, args.template)
    endpoint = Endpoint(args.server, args.server_model or args.model, api_key(args.api_key_env))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    answers, finished = generate_remote(endpoint, encode_prompts(tokenizer, spec, items, args.max_prompt_tokens),
                                        sampling, stop_ids(tokenizer, spec), out.with_name(out.name + ".calls.jsonl"),
                                        args.workers)
    return tokenizer, spec, answers, finished
