"""Send many requests to an OpenAI-compatible server (vLLM, TGI, llama.cpp's server, `sft serve`, a
hosted API) in parallel, and remember every reply on disk. Used by `evaluation judge` (chat
completions), `sft generate --server` and `evaluation reading --server` (completions from token ids).

* Transient failures (HTTP 408/409/429/5xx, a refused or dropped connection, a timeout) are retried
  with exponential backoff, honouring ``Retry-After``; any other HTTP error (a wrong key, an unknown
  model, a prompt over the server's context) stops the run at once with the server's own message,
  and no further request is sent (Ctrl-C too).
* Every reply is appended to a JSON Lines cache keyed by what was asked, flushed as it arrives: a run
  that crashed or was stopped asks again only what is missing, and a rerun costs nothing. A torn last
  line (a run killed while writing) is ignored and never glued to the next row.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from zhllama.errors import UserError

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Endpoint:
    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None  # sent as a bearer token, never written anywhere
    timeout_s: float = 300.0
    retries: int = 6
    backoff_s: float = 2.0

    def address(self, path: str) -> str:
        """``path`` (e.g. "/chat/completions") under the base; a base that already ends with it is kept."""
        url = self.url.rstrip("/")
        return url if url.endswith(path) else url + path


def check_url(flag: str, url: str) -> list[str]:
    return [] if url.startswith(("http://", "https://")) else [f"{flag} {url!r}: expected an http:// or https:// address"]


def check_api_key_env(variable: str | None) -> list[str]:
    """``--api-key-env VAR``: VAR must be set (the key itself never goes on a command line)."""
    if variable and not os.environ.get(variable):
        return [f"--api-key-env {variable}: that environment variable is not set"]
    return []


def api_key(variable: str | None) -> str | None:
    return os.environ.get(variable) if variable else None


class _Transient(Exception):
    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


def _post_once(endpoint: Endpoint, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    url = endpoint.address(path)
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    request = urllib.request.Request(url, data=json.dumps({"model": endpoint.model, **payload}).encode("utf-8"),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if exc.code in RETRY_STATUSES:
            retry_after = exc.headers.get("Retry-After", "")
            raise _Transient(f"HTTP {exc.code}", float(retry_after) if retry_after.isdigit() else None) from exc
        raise UserError(f"{url} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc


def post(endpoint: Endpoint, path: str, payload: dict[str, Any],
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The JSON reply to ``payload`` (the model's name added), after up to ``endpoint.retries`` retries."""
    for attempt in range(endpoint.retries + 1):
        try:
            return _post_once(endpoint, path, payload)
        except _Transient as exc:
            if attempt == endpoint.retries:
                raise UserError(f"{endpoint.address(path)}: gave up after {attempt + 1} tries: {exc}") from None
            sleep(exc.wait_s if exc.wait_s is not None else min(60.0, endpoint.backoff_s * 2 ** attempt))
    raise AssertionError("unreachable")


def first_choice(endpoint: Endpoint, path: str, reply: dict[str, Any]) -> dict[str, Any]:
    try:
        return reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise UserError(f"{endpoint.address(path)}: not a completion: {json.dumps(reply)[:300]}") from None


class ReplyCache:
    """Replies (any JSON value) by request key, in a JSON Lines file that only grows."""

    def __init__(self, path: Path):
        self.path = path
        self.replies: dict[str, Any] = {}
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        self._torn = bool(text) and not text.endswith("\n")  # the next row must not join that line
        for line in text.splitlines():
            try:
                row = json.loads(line)
                self.replies[row["key"]] = row["reply"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # the torn last line of a killed run
        self._lock = threading.Lock()

    def add(self, key: str, reply: Any) -> None:
        with self._lock:
            self.replies[key] = reply
            with self.path.open("a", encoding="utf-8") as fh:
                if self._torn:
                    fh.write("\n")
                    self._torn = False
                fh.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
                fh.flush()


def ask_all(requests: dict[str, Any], send: Callable[[Any], Any], cache: ReplyCache, workers: int,
            label: str, progress: bool = True) -> dict[str, Any]:
    """``send(request)`` for every request not in the cache, ``workers`` at a time; every reply by key."""
    missing = [key for key in requests if key not in cache.replies]
    done = [len(requests) - len(missing)]
    if progress:
        print(f"{label}: {len(requests)} requests, {done[0]} already answered ({cache.path.name})", file=sys.stderr)
    stop = threading.Event()  # set by the first hard failure or Ctrl-C: no new request is sent after it

    def one(key: str) -> None:
        if stop.is_set():
            return
        try:
            reply = send(requests[key])
        except BaseException:
            stop.set()
            raise
        cache.add(key, reply)
        done[0] += 1
        if progress and (done[0] % 20 == 0 or done[0] == len(requests)):
            print(f"{label}: {done[0]}/{len(requests)} answered", file=sys.stderr)

    if missing:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            finished, _ = wait([pool.submit(one, key) for key in missing], return_when=FIRST_EXCEPTION)
            for future in finished:
                future.result()
        finally:
            stop.set()  # after a hard failure or Ctrl-C: send nothing new, keep the replies in flight
            pool.shutdown(wait=True, cancel_futures=True)
    return {key: cache.replies[key] for key in requests}


COMPLETIONS = "/completions"


def complete_all(endpoint: Endpoint, requests: list[dict[str, Any]], calls_file: Path, workers: int, label: str,
                 progress: bool = True) -> list[dict[str, Any]]:
    """``/v1/completions`` for each request (prompts as token ids: the server reads exactly the ids the
    caller built), in order: ``{"text", "finish_reason"}`` each, cached in ``calls_file`` by what was asked."""
    from zhllama.files import sha256_json

    keys = [sha256_json({"model": endpoint.model, **r}) for r in requests]

    def send(request: dict[str, Any]) -> dict[str, Any]:
        choice = first_choice(endpoint, COMPLETIONS, post(endpoint, COMPLETIONS, request))
        return {"text": choice.get("text") or "", "finish_reason": choice.get("finish_reason")}
    replies = ask_all(dict(zip(keys, requests)), send, ReplyCache(calls_file), workers, label, progress)
    return [replies[k] for k in keys]
