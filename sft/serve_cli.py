"""Serve a model over an OpenAI-compatible HTTP API, with a chat page to try it in a browser.

    python -m sft serve --model DIR [--host 127.0.0.1] [--port 8000] [--name NAME] [--max-context 2048]
        [--max-concurrent 1] [--max-tokens 256]

Then open http://127.0.0.1:8000/ (streams answers, keeps the conversation, "New chat" resets it),
or point any OpenAI client at http://127.0.0.1:8000/v1 (``/v1/chat/completions`` with or without
``stream``, ``/v1/completions``, ``/v1/models``); the model name is NAME (default: the folder's
name). Prompts are formatted with the template saved with the model (sft_template.json), so they
encode to the ids training used. Requests beyond --max-concurrent wait their turn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .templates import TEMPLATE_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder written by `sft export`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    parser.add_argument("--name", default=None, help="model id clients send (default: the folder's name)")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, default=None, help="override the saved template")
    parser.add_argument("--max-context", type=int, default=2048, help="prompt + answer token limit per request")
    parser.add_argument("--max-concurrent", type=int, default=1, help="generations at once; the rest queue")
    parser.add_argument("--max-tokens", type=int, default=256, help="answer length when a request sets none")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")


def run(args: argparse.Namespace) -> int:
    from zhllama.errors import UserError

    from .generate import load_model
    from .serve import Engine, make_server

    if args.max_concurrent < 1 or args.max_context < 2 or args.max_tokens < 1:
        raise UserError("--max-concurrent, --max-tokens must be >= 1 and --max-context >= 2")
    model, tokenizer, spec = load_model(args.model, args.template, args.dtype)
    name = args.name or Path(args.model).resolve().name
    engine = Engine(model, tokenizer, spec, name, args.max_context, args.max_concurrent, args.max_tokens)
    try:
        server = make_server(engine, args.host, args.port)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    host, port = server.server_address[:2]
    print(f"serving {name} (template {spec.name}) on http://{host}:{port}/  (OpenAI API: http://{host}:{port}/v1)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
