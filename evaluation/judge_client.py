"""Ask an OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp's server, `sft serve`, a hosted
API) many questions in parallel, and remember every answer on disk.

* Transient failures (HTTP 408/409/429/5xx, a refused or dropped connection, a timeout) are retried
  with exponential backoff, honouring ``Retry-After``; any other HTTP error (a wrong key, an unknown
  model, a prompt over the judge's context) stops the run at once with the server's own message.
* Every reply is appended to a JSON Lines cache keyed by what was asked (model, messages, sampling
  settings), flushed as it arrives: a run that crashed or was stopped asks again only what is
  missing, and a rerun with the same prompts costs nothing. A torn last line is ignored.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from zhllama.errors import UserError
from zhllama.files import sha256_json

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Endpoint:
    url: str  # the API base (http://host:8000/v1) or its /chat/completions address
    model: str
    api_key: str | None = None  # never written anywhere
    max_tokens: int = 512
    temperature: float = 0.0
    timeout_s: float = 300.0
    retries: int = 6
    backoff_s: float = 2.0

    @property
    def chat_url(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def key(self, messages: list[dict]) -> str:
        """What makes two calls the same question (the address and the key do not)."""
        return sha256_json({"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                            "temperature": self.temperature})


class _Transient(Exception):
    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


def _post(endpoint: Endpoint, messages: list[dict]) -> str:
    body = json.dumps({"model": endpoint.model, "messages": messages, "max_tokens": endpoint.max_tokens,
                       "temperature": endpoint.temperature, "stream": False}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    request = urllib.request.Request(endpoint.chat_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if exc.code in RETRY_STATUSES:
            retry_after = exc.headers.get("Retry-After", "")
            raise _Transient(f"HTTP {exc.code}", float(retry_after) if retry_after.isdigit() else None) from exc
        raise UserError(f"judge {endpoint.chat_url} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise UserError(f"judge {endpoint.chat_url}: not a chat completion: {json.dumps(payload)[:300]}") from None
    return content or ""


def ask(endpoint: Endpoint, messages: list[dict], sleep: Callable[[float], None] = time.sleep) -> str:
    """The reply's text, after up to ``endpoint.retries`` retries of transient failures."""
    for attempt in range(endpoint.retries + 1):
        try:
            return _post(endpoint, messages)
        except _Transient as exc:
            if attempt == endpoint.retries:
                raise UserError(f"judge {endpoint.chat_url}: gave up after {attempt + 1} tries: {exc}") from None
            sleep(exc.wait_s if exc.wait_s is not None else min(60.0, endpoint.backoff_s * 2 ** attempt))
    raise AssertionError("unreachable")


class ReplyCache:
    """Replies by call key, in a JSON Lines file that only grows."""

    def __init__(self, path: Path):
        self.path = path
        self.replies: dict[str, str] = {}
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        self._torn = bool(text) and not text.endswith("\n")  # the next row must not join that line
        if text:
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    self.replies[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # the torn last line of a killed run
        self._lock = threading.Lock()

    def add(self, key: str, reply: str) -> None:
        with self._lock:
            self.replies[key] = reply
            with self.path.open("a", encoding="utf-8") as fh:
                if self._torn:
                    fh.write("\n")
                    self._torn = False
                fh.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
                fh.flush()


def ask_all(endpoint: Endpoint, calls: dict[str, list[dict]], cache: ReplyCache, workers: int,
            progress: bool = True) -> dict[str, str]:
    """Every call's reply by key: cached ones as they are, the others asked ``workers`` at a time."""
    missing = [key for key in calls if key not in cache.replies]
    done = [len(calls) - len(missing)]
    if progress:
        print(f"judge: {len(calls)} calls, {done[0]} already answered (cache {cache.path.name})", file=sys.stderr)

    stop = threading.Event()  # set by the first hard failure or Ctrl-C: no new call is sent after it

    def one(key: str) -> None:
        if stop.is_set():
            return
        try:
            reply = ask(endpoint, calls[key])
        except BaseException:
            stop.set()
            raise
        cache.add(key, reply)
        done[0] += 1
        if progress and (done[0] % 20 == 0 or done[0] == len(calls)):
            print(f"judge: {done[0]}/{len(calls)} answered", file=sys.stderr)

    if missing:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            finished, _ = wait([pool.submit(one, key) for key in missing], return_when=FIRST_EXCEPTION)
            for future in finished:
                future.result()
        finally:
            stop.set()  # after a hard failure or Ctrl-C: ask nothing new, keep the replies in flight
            pool.shutdown(wait=True, cancel_futures=True)
    return {key: cache.replies[key] for key in calls}
