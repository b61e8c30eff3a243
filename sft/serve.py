"""An OpenAI-compatible HTTP server for an exported model (standard library only) and its chat page.

    server = make_server(Engine(model, tokenizer, spec, "zh-sft"), "127.0.0.1", 8000)
    server.serve_forever()

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both
with ``stream: true`` as Server-Sent Events in OpenAI's chunk format, ending ``data: [DONE]``),
``GET /`` the chat page (sft/serve_page.py). Chat prompts are encoded with the model's SFT
template (``encode_prompt``: the ids training used). Requests are handled in threads, but at most
``max_concurrent`` generate at once: the others wait their turn on a semaphore, none is refused.
Bad requests get OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``) and
a 4xx status; an unexpected failure a 500 with the same shape, never a traceback.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from .data import Conversation, Turn
from .generate import Sampling, generate_ids
from .templates import TemplateSpec, encode_prompt, stop_ids

MAX_BODY = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ApiError(400, f"{where}.content must be a string or a list of text parts", where)


def conversation_from_messages(messages: Any) -> Conversation:
    """OpenAI chat messages -> a Conversation whose last turn awaits its answer."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    system, turns, user = None, [], None
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with role and content", where)
        role, text = message.get("role"), _text(message.get("content"), where)
        if role in ("system", "developer") and not turns and user is None:
            system = text if system is None else system + "\n" + text
        elif role == "user" and user is None:
            user = text
        elif role == "assistant" and user is not None:
            turns.append(Turn(user, text))
            user = None
        else:
            raise ApiError(400, f"{where}: unexpected role {role!r} here (expected an optional system message, "
                           "then user and assistant turns in alternation, ending with a user message)", where)
    if user is None:
        raise ApiError(400, "the last message must be a user message", "messages")
    return Conversation(tuple(turns) + (Turn(user, None),), system)


@dataclass
class Engine:
    """The model behind the server; ``max_concurrent`` generations run at once, the rest queue."""

    model: Any
    tokenizer: Any
    spec: TemplateSpec
    name: str
    max_context: int = 2048
    max_concurrent: int = 1
    default_max_tokens: int = 256

    def __post_init__(self):
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        # A tokenizers object must not encode in two threads at once ("Already borrowed"):
        # encoding sets its truncation/special-token state.
        self._encode_lock = threading.Lock()
        self.stop = stop_ids(self.tokenizer, self.spec)  # EOS, and the chat template's end of a reply

    def encode(self, fn, *args) -> list[int]:
        with self._encode_lock:
            return fn(self, *args)

    def sampling(self, body: dict[str, Any]) -> Sampling:
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or self.default_max_tokens
        temperature = body.get("temperature", 0.0)
        top_p = body.get("top_p", 1.0)
        for key, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ApiError(400, f"{key} must be a non-negative number", key)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, "max_tokens must be a positive integer", "max_tokens")
        penalty = body.get("repetition_penalty", 1.0)  # not OpenAI's; vLLM's and TGI's name for it
        if not isinstance(penalty, (int, float)) or isinstance(penalty, bool) or penalty <= 0:
            raise ApiError(400, "repetition_penalty must be a positive number", "repetition_penalty")
        return Sampling(max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature or 1.0,
                        top_p=top_p or 1.0, top_k=0, repetition_penalty=float(penalty), seed=int(body.get("seed") or 0))

    def check_fits(self, prompt: list[int], sampling: Sampling) -> None:
        if len(prompt) + sampling.max_new_tokens > self.max_context:
            raise ApiError(400, f"this model's context is {self.max_context} tokens; the prompt has {len(prompt)} "
                           f"and max_tokens asks for {sampling.max_new_tokens} more", "messages",
                           "context_length_exceeded")

    @staticmethod
    def _seed(sampling: Sampling) -> None:
        if sampling.do_sample:  # a request's seed makes its sample reproducible
            import torch

            torch.manual_seed(sampling.seed)

    def generate(self, prompt: list[int], sampling: Sampling) -> tuple[list[int], str]:
        with self._slots:
            self._seed(sampling)
            ids = generate_ids(self.model, self.tokenizer, [prompt], sampling, stop=self.stop)[0]
        return ids, "length" if len(ids) >= sampling.max_new_tokens else "stop"

    def stream(self, prompt: list[int], sampling: Sampling) -> Iterator[str | tuple[int, str]]:
        """Text pieces as they decode, then (completion tokens, finish reason)."""
        from transformers import TextIteratorStreamer

        with self._slots:
            self._seed(sampling)
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            result: list[Any] = []

            def produce() -> None:
                try:
                    result.append(generate_ids(self.model, self.tokenizer, [prompt], sampling, streamer,
                                                self.stop)[0])
                except BaseException as exc:  # noqa: BLE001 - reported by the reader below
                    result.append(exc)
                    streamer.end()

            worker = threading.Thread(target=produce, daemon=True)
            worker.start()
            for piece in streamer:
                if piece:
                    yield piece
            worker.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        ids = result[0]
        yield len(ids), "length" if len(ids) >= sampling.max_new_tokens else "stop"


def _chat_prompt(engine: Engine, body: dict[str, Any]) -> list[int]:
    return encode_prompt(conversation_from_messages(body.get("messages")), engine.tokenizer, engine.spec)


def _completion_prompt(engine: Engine, body: dict[str, Any]) -> list[int]:
    """A text (tokenized, BOS added as at training time) or, as the OpenAI API allows, token ids used
    as they are (`sft generate --server` sends the template's ids this way)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        if not all(0 <= i < len(engine.tokenizer) for i in prompt):
            raise ApiError(400, f"prompt token ids must lie in 0..{len(engine.tokenizer) - 1}", "prompt")
        return list(prompt)
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string or a list of token ids", "prompt")
    return list(engine.tokenizer(prompt)["input_ids"])


class Handler(BaseHTTPRequestHandler):
    engine: Engine  # set on the subclass made by make_server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request on stderr is noise
        pass

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.engine.name:
            raise ApiError(404, f"The model `{model}` does not exist; this server has `{self.engine.name}`",
                           "model", "model_not_found")
        return body

    def _guarded(self, action) -> None:
        try:
            action()
        except ApiError as exc:
            self._json(exc.status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as exc:  # noqa: BLE001 - the client gets the error shape, never a traceback
            self._json(500, ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error").body())

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _get(self) -> None:
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            from .serve_page import PAGE

            self._send(200, PAGE.replace("__MODEL__", self.engine.name).encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [self._model_card()]})
        elif path == f"/v1/models/{self.engine.name}":
            self._json(200, self._model_card())
        else:
            raise ApiError(404, f"no route GET {path}", code="not_found")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.engine.name, "object": "model", "created": 0, "owned_by": "zhllama"}

    def _post(self) -> None:
        path = self.path.split("?")[0]
        if path not in ("/v1/chat/completions", "/v1/completions"):
            raise ApiError(404, f"no route POST {path}", code="not_found")
        chat = path == "/v1/chat/completions"
        body = self._body()
        engine = self.engine
        prompt = engine.encode(_chat_prompt if chat else _completion_prompt, body)
        sampling = engine.sampling(body)
        engine.check_fits(prompt, sampling)
        reply_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            self._stream(chat, reply_id, prompt, sampling, bool((body.get("stream_options") or {}).get("include_usage")))
            return
        ids, finish = engine.generate(prompt, sampling)
        text = engine.tokenizer.decode(ids, skip_special_tokens=True)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(ids), "total_tokens": len(prompt) + len(ids)}
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                   "logprobs": None} if chat else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
        self._json(200, {"id": reply_id, "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": engine.name, "choices": [choice], "usage": usage})

    def _stream(self, chat: bool, reply_id: str, prompt: list[int], sampling: Sampling, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        created, kind = int(time.time()), "chat.completion.chunk" if chat else "text_completion"

        def event(delta: dict[str, Any] | str | None, finish: str | None = None, usage=None) -> None:
            if chat:
                choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            else:
                choices = [] if delta is None else [{"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}]
            chunk = {"id": reply_id, "object": kind, "created": created, "model": self.engine.name, "choices": choices}
            if usage is not None:
                chunk["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        if chat:
            event({"role": "assistant", "content": ""})
        try:
            for item in self.engine.stream(prompt, sampling):
                if isinstance(item, str):
                    event({"content": item} if chat else item)
                else:
                    count, finish = item
                    event({} if chat else "", finish)
                    if include_usage:
                        event(None, usage={"prompt_tokens": len(prompt), "completion_tokens": count,
                                           "total_tokens": len(prompt) + count})
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:  # noqa: BLE001 - headers are sent: report in the stream, OpenAI-style
            error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error").body()
            self.wfile.write(b"data: " + json.dumps(error).encode("utf-8") + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
