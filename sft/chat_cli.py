"""Chat with a model in the terminal: tokens stream as they are generated, history is kept.

    python -m sft chat --model DIR [--system "..."] [--max-new-tokens 512] [--do-sample --temperature 0.7 ...]

Uses the template saved with the model (sft_template.json), so multi-turn prompts are formatted
exactly as in training. Commands: /reset clears the history, /exit (or end of input) quits. Old
turns are dropped from the prompt when it would exceed --max-context tokens.
"""
from __future__ import annotations

import argparse
import sys

from .templates import TEMPLATE_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder written by `sft export`")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, default=None, help="override the saved template")
    parser.add_argument("--system", default=None, help="system prompt (default: the template's)")
    parser.add_argument("--max-context", type=int, default=2048, help="prompt + answer token budget")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")


def fit_history(turns: list, user: str, encode, budget: int):
    """The longest recent history whose prompt fits ``budget`` tokens (always keeps the new turn)."""
    from .data import Turn

    history = list(turns)
    while True:
        ids = encode(history + [Turn(user, None)])
        if len(ids) <= budget or not history:
            return history, ids
        history.pop(0)


def run(args: argparse.Namespace) -> int:
    import threading

    from transformers import TextIteratorStreamer

    from .data import Conversation, Turn
    from .generate import Sampling, generate_ids, load_model
    from .templates import encode_prompt, stop_ids

    model, tokenizer, spec = load_model(args.model, args.template, args.dtype)
    stops = stop_ids(tokenizer, spec)
    sampling = Sampling(args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.top_k,
                        args.repetition_penalty)
    encode = lambda turns: encode_prompt(Conversation(tuple(turns), args.system), tokenizer, spec)
    turns: list[Turn] = []
    interactive = sys.stdin.isatty()
    print(f"template {spec.name}; /reset clears history, /exit quits", file=sys.stderr)
    while True:
        try:
            user = input(">>> " if interactive else "")
        except EOFError:
            break
        if user.strip() in ("/exit", "/quit"):
            break
        if user.strip() == "/reset":
            turns = []
            print("(history cleared)", file=sys.stderr)
            continue
        if not user.strip():
            continue
        turns, ids = fit_history(turns, user, encode, args.max_context - args.max_new_tokens)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                generate_ids(model, tokenizer, [ids], sampling, streamer, stops)
            except BaseException as exc:  # noqa: BLE001 - re-raised below; end() unblocks the reader
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=produce)
        worker.start()
        pieces = []
        for piece in streamer:  # printed as soon as each token decodes
            pieces.append(piece)
            print(piece, end="", flush=True)
        worker.join()
        if failure:
            raise failure[0]
        print()
        turns.append(Turn(user, "".join(pieces).strip()))
    return 0
