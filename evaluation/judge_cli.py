"""Have an LLM judge the answers of `sft generate`: grade them, or compare two models' answers.

    python -m sft generate --model outputs/zh_sft_merged --input ../shared/data/sft/belle_eval_set.json \\
        --out runs/belle_sft.jsonl
    # any OpenAI-compatible endpoint: vLLM (vllm serve Qwen/Qwen2.5-72B-Instruct), TGI, llama.cpp's
    # llama-server, a hosted API (key from an environment variable, never the command line)
    python -m evaluation judge --answers runs/belle_sft.jsonl --judge-url http://127.0.0.1:8000/v1 \\
        --judge-model Qwen2.5-72B-Instruct --out runs/belle_sft.judge.json [--workers 8]
    python -m evaluation judge --answers runs/belle_sft.jsonl --versus runs/belle_base.jsonl \\
        --judge-url https://api.example.com/v1 --judge-model gpt-4o --api-key-env OPENAI_API_KEY \\
        --out runs/sft_vs_base.judge.json

Without ``--versus`` each answer gets a 1-10 grade (against its reference answer where the file has
one); with it, each question is judged twice with the answers swapped and ``--answers`` wins, ties or
loses (evaluation/judge.py). OUT gets the summary per BELLE class and every item's verdicts; the table
is printed. Every reply is kept in OUT.calls.jsonl: rerun the same command after a crash or Ctrl-C and
only the missing calls are made (delete that file to ask again). ``--pairs-out FILE`` (with
``--versus``) turns the verdicts into DPO pairs: every question the judge decided the same way in both
orders, the winner's answer as ``chosen`` (two sampled answers of one model: on-policy pairs).
``--kto-out FILE`` (grading) turns the grades into KTO examples: an answer graded at least
``--kto-threshold`` (7) is desirable, any other undesirable (python -m sft train objective=kto).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems
from zhllama.files import sha256_file, sha256_json, write_json_atomic, write_text_atomic
from zhllama.judge_prompts import prompts_fingerprint
from zhllama.openai_client import (Endpoint, ReplyCache, api_key, ask_all, check_api_key_env, check_url,
                                   first_choice, post)

from .judge import (compare_calls, compare_report, grade_calls, grade_report, kto_examples, markdown_table,
                    pair_answers, preference_pairs, read_answers)

CHAT = "/chat/completions"
MAX_TOKENS = 512  # a verdict with a few sentences of reasons
TEMPERATURE = 0.0  # the same question gets the same verdict: reruns and the cache agree


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Endpoint("", "")
    parser.add_argument("--answers", required=True, help="the JSONL of `sft generate` to judge")
    parser.add_argument("--versus", default=None, help="another model's JSONL on the same questions: compare instead of grade")
    parser.add_argument("--judge-url", required=True, help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--judge-model", required=True, help="the model name the endpoint serves")
    parser.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the API key")
    parser.add_argument("--out", required=True, help="the report to write (JSON); replies are kept in OUT.calls.jsonl")
    parser.add_argument("--workers", type=int, default=8, help="requests in flight at once (8)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help=f"longest judge reply ({MAX_TOKENS})")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s,
                        help=f"seconds to wait for one reply ({defaults.timeout_s:g})")
    parser.add_argument("--retries", type=int, default=defaults.retries,
                        help=f"retries of a transient failure, with backoff ({defaults.retries})")
    parser.add_argument("--limit", type=int, default=None, help="judge only the first N answers")
    parser.add_argument("--pairs-out", default=None, metavar="FILE",
                        help="with --versus: write the questions the judge decided both ways as DPO pairs "
                             "(JSON Lines: instruction, chosen, rejected; python -m sft train objective=dpo)")
    parser.add_argument("--kto-out", default=None, metavar="FILE",
                        help="grading: write every graded answer as a KTO example (JSON Lines: instruction, output, "
                             "kto_tag; python -m sft train objective=kto)")
    parser.add_argument("--kto-threshold", type=int, default=7,
                        help="with --kto-out: the lowest grade (1-10) that makes an answer desirable (7)")
    parser.add_argument("--no-progress", action="store_true")


def _check(args: argparse.Namespace) -> list[str]:
    problems = []
    for flag, value in (("--answers", args.answers), ("--versus", args.versus)):
        if value is not None and not Path(value).is_file():
            problems.append(f"{flag} {value}: no such file")
    problems += check_url("--judge-url", args.judge_url)
    problems += check_api_key_env(args.api_key_env)
    for flag, value, least in (("--workers", args.workers, 1), ("--max-tokens", args.max_tokens, 16),
                               ("--retries", args.retries, 0), ("--limit", args.limit, 1)):
        if value is not None and value < least:
            problems.append(f"{flag}: expected >= {least}, got {value}")
    if args.timeout <= 0:
        problems.append(f"--timeout: expected > 0, got {args.timeout}")
    if Path(args.out).is_dir():
        problems.append(f"--out {args.out} is a folder; give a file path")
    if args.pairs_out is not None and args.versus is None:
        problems.append("--pairs-out: needs --versus (pairs come from comparing two answers)")
    if args.pairs_out is not None and Path(args.pairs_out).is_dir():
        problems.append(f"--pairs-out {args.pairs_out} is a folder; give a file path")
    if args.kto_out is not None and args.versus is not None:
        problems.append("--kto-out: not with --versus (KTO examples come from grades; --pairs-out gives DPO pairs)")
    if args.kto_out is not None and Path(args.kto_out).is_dir():
        problems.append(f"--kto-out {args.kto_out} is a folder; give a file path")
    if not 1 <= args.kto_threshold <= 10:
        problems.append(f"--kto-threshold: a grade from 1 to 10, got {args.kto_threshold}")
    return problems


def _key(endpoint: Endpoint, max_tokens: int):
    """What makes two calls the same question (the address and the key do not)."""
    return lambda messages: sha256_json({"model": endpoint.model, "messages": messages, "max_tokens": max_tokens,
                                         "temperature": TEMPERATURE})


def run(args: argparse.Namespace) -> int:
    raise_if_problems("judge settings", _check(args))
    answers = read_answers(args.answers)[: args.limit]
    endpoint = Endpoint(args.judge_url, args.judge_model, api_key(args.api_key_env), args.timeout, args.retries)
    key = _key(endpoint, args.max_tokens)
    if args.versus:
        pairs = pair_answers(answers, read_answers(args.versus), only_ours=args.limit is not None)
        calls = compare_calls(pairs, key)
        asked = {c[k]: c[m] for c in calls for k, m in (("key", "messages"), ("swapped_key", "swapped_messages"))}
    else:
        calls = grade_calls(answers, key)
        asked = {c["key"]: c["messages"] for c in calls}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def send(messages: list[dict]) -> str:
        reply = post(endpoint, CHAT, {"messages": messages, "max_tokens": args.max_tokens, "temperature": TEMPERATURE})
        return (first_choice(endpoint, CHAT, reply).get("message") or {}).get("content") or ""
    replies = ask_all(asked, send, ReplyCache(out.with_name(out.name + ".calls.jsonl")), args.workers, "judge",
                      progress=not args.no_progress)
    report = compare_report(calls, replies) if args.versus else grade_report(calls, replies)
    report["made_by"] = {
        "judge": {"url": endpoint.address(CHAT), "model": endpoint.model, "temperature": TEMPERATURE,
                  "max_tokens": args.max_tokens},
        "prompts_sha256": prompts_fingerprint(),
        "answers": {"file": str(args.answers), "sha256": sha256_file(args.answers)},
        "versus": {"file": str(args.versus), "sha256": sha256_file(args.versus)} if args.versus else None,
        "limit": args.limit,
    }
    if args.pairs_out:
        pairs = preference_pairs(calls, report, endpoint.model)
        write_text_atomic(args.pairs_out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
        report["made_by"]["pairs_out"] = {"file": str(args.pairs_out), "pairs": len(pairs)}
    if args.kto_out:
        examples = kto_examples(calls, report, endpoint.model, args.kto_threshold)
        write_text_atomic(args.kto_out, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
        desirable = sum(e["kto_tag"] for e in examples)
        report["made_by"]["kto_out"] = {"file": str(args.kto_out), "threshold": args.kto_threshold,
                                        "desirable": desirable, "undesirable": len(examples) - desirable}
    write_json_atomic(out, report)
    print(markdown_table(report))
    if args.kto_out:
        print(f"wrote {len(examples)} KTO examples ({desirable} graded >= {args.kto_threshold}: desirable; unreadable "
              f"grades give none) to {args.kto_out}")
    if args.pairs_out:
        print(f"wrote {len(pairs)} preference pairs (of {len(calls)} compared; ties, order-dependent and "
              f"unreadable verdicts give none) to {args.pairs_out}")
    unparsed = report["overall"]["unparsed"]
    if unparsed:
        print(f"{unparsed} of {report['overall']['items']} judged without a readable verdict (see 'reply' in {out})")
    if unparsed == report["overall"]["items"]:
        raise UserError(f"the judge {endpoint.model} gave no readable verdict at all: is it an instruction model? "
                        f"Its replies are in {out}")
    print(f"wrote {out}")
    return 0
