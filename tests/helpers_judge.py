"""A fake LLM judge for the tests: a small HTTP server in the test process that speaks the chat-completions wire
format and judges by a rule the tests know (an answer holding the reference is good), with knobs for the
failure cases. Used by `evaluation judge`'s tests and GRPO's judge reward's."""
from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class FakeJudge:
    """Judges by the reference: an answer containing it is good. Knobs for the failure cases."""

    def __init__(self):
        self.requests: list[dict] = []
        self.prefer_first = False
        self.transient_failures = 0  # the next N requests get 503 (Retry-After: 0)
        self.fail_hard_after: int | None = None  # requests after this many get HTTP 400
        self.required_key: str | None = None
        self.lock = threading.Lock()

    def reply(self, text: str) -> str:
        reference = block(text, "参考答案")
        if "[助手的回答]" in text:
            answer = block(text, "助手的回答")
            if "UNREADABLE" in answer:
                return "这个回答还可以。"
            score = 9 if reference and reference in answer else 3
            return f"评分标准：评分：1 最差，评分：10 最好。\n理由：略。\n评分：{score}"
        if self.prefer_first:
            return "结论：A"
        good = [bool(reference) and reference in block(text, name) for name in ("回答 A", "回答 B")]
        return "理由：略。\n结论：" + ("A" if good == [True, False] else "B" if good == [False, True] else "平")


def block(text: str, name: str) -> str:
    """The text of the judge prompt's block [name] (the question, the reference, an answer)."""
    found = re.search(r"\[" + re.escape(name) + r"\]\n(.*?)(?:\n\n\[|\n\n评价要点|$)", text, re.S)
    return found.group(1) if found else ""


def _handler(judge: FakeJudge):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with judge.lock:
                judge.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                count = len(judge.requests)
                transient = judge.transient_failures > 0
                judge.transient_failures -= transient
            if judge.required_key and self.headers.get("Authorization") != f"Bearer {judge.required_key}":
                return self._send(401, {"error": {"message": "Incorrect API key provided"}})
            if transient:
                return self._send(503, {"error": {"message": "busy"}}, {"Retry-After": "0"})
            if judge.fail_hard_after is not None and count > judge.fail_hard_after:
                return self._send(400, {"error": {"message": "prompt is longer than the context"}})
            content = judge.reply(body["messages"][-1]["content"])
            return self._send(200, {"object": "chat.completion", "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": content}}]})
    return Handler


@contextmanager
def serve_fake_judge() -> Iterator["FakeJudge"]:
    fake = FakeJudge()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
