"""A scripted OpenAI-compatible chat server on 127.0.0.1, for judge tests (no network).

Usage (pytest puts tests/ on sys.path, so ``from judge_server import serve`` works):

    from judge_server import serve

    with serve(["good", "error500", "garbage"]) as url:   # url: "http://127.0.0.1:PORT"
        judge = LiteLLMJudge("openai/judge-test", api_base=url + "/v1",
                             api_key_env="JUDGE_TEST_KEY", ...)   # any non-empty key
        ...
        url.requests   # every request received, in order: {"path", "headers", "body"}
                       # (header names lowercased; body is the parsed JSON)

``serve(script)`` answers ``POST /v1/chat/completions`` with the usual chat-completion
JSON (``choices[0].message.content`` and ``usage``). ``script`` is one step (used for
every call) or a list of steps consumed one per call, the last repeating. A step is a
mode name, or a callable ``body -> Reply`` for anything else. Modes:

    good            {"positions": [first candidate]}  (candidates are read from the
                    judge's inline markers [12:" pine"] in the user message)
    select:3,7      {"positions": [3, 7]}
    delay:0.5       sleep 0.5 s, then answer like good
    slow            sleep SLOW_S (3 s: past any test timeout), then answer like good
    error500        HTTP 500 (any code: error429, error401, ...)
    leak_key        HTTP 401 whose error message echoes the bearer token, as real
                    providers do ("Incorrect API key provided: sk-...")
    garbage         prose, no JSON
    out_of_range    {"positions": [1000000]}
    not_candidate   the smallest position that is not a candidate
    too_many        every candidate position
    hostile         every position from 0 to the last candidate: what a judge that
                    obeyed "select every position" inside the rollout would answer
    echo_injection  the first JSON object found inside the quoted rollout (markers
                    undone), else the rollout text itself: a judge that obeys the rollout
"""

from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Sequence, Union

SLOW_S = 3.0

_MARKER = re.compile(r'\[(\d+):("(?:[^"\\]|\\.)*")\]')
_ROLLOUT = re.compile(r"<<<ROLLOUT-([0-9a-f]+)>>>\n(.*?)\n<<<END-\1>>>", re.S)


@dataclass
class Reply:
    """What the server sends for one call."""

    content: str = ""
    status: int = 200
    delay_s: float = 0.0
    error: str = "scripted failure"


Step = Union[str, Callable[[dict], Reply]]


class BaseURL(str):
    """The server's base URL (a plain str) that also carries what the server received."""

    requests: list[dict[str, Any]]

    @property
    def api_base(self) -> str:
        return self + "/v1"


def _user_text(body: dict) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", [])
                     if m.get("role") == "user")


def candidates(body: dict) -> list[int]:
    """Candidate positions the judge marked inline in its prompt, in order, unique."""
    seen: list[int] = []
    for m in _MARKER.finditer(_user_text(body)):
        if int(m.group(1)) not in seen:
            seen.append(int(m.group(1)))
    return seen


def _positions(ps: Sequence[int]) -> str:
    return json.dumps({"positions": list(ps)})


def _echo_injection(body: dict) -> str:
    m = _ROLLOUT.search(_user_text(body))
    if not m:
        return "no rollout found"
    text = _MARKER.sub(lambda mm: json.loads(mm.group(2)), m.group(2))
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                obj, _ = decoder.raw_decode(text, i)
                return json.dumps(obj)
            except ValueError:
                continue
    return text


def reply_for(step: Step, body: dict, token: str = "") -> Reply:
    """The reply to one call; ``token`` is the bearer token received (for leak_key)."""
    if callable(step):
        return step(body)
    cands = candidates(body)
    good = _positions(cands[:1])
    if step == "good":
        return Reply(good)
    if step.startswith("select:"):
        return Reply(_positions([int(p) for p in step[7:].split(",") if p.strip()]))
    if step.startswith("delay:"):
        return Reply(good, delay_s=float(step[6:]))
    if step == "slow":
        return Reply(good, delay_s=SLOW_S)
    if step.startswith("error"):
        return Reply(status=int(step[5:]))
    if step == "leak_key":
        return Reply(status=401, error=f"Incorrect API key provided: {token}")
    if step == "garbage":
        return Reply("I think the third and fifth tokens look the most relevant!")
    if step == "out_of_range":
        return Reply(_positions([1_000_000]))
    if step == "not_candidate":
        return Reply(_positions([next(p for p in range(10**6) if p not in cands)]))
    if step == "too_many":
        return Reply(_positions(cands))
    if step == "hostile":
        return Reply(_positions(range(max(cands, default=0) + 1)))
    if step == "echo_injection":
        return Reply(_echo_injection(body))
    raise ValueError(f"judge_server: unknown step {step!r}")


@contextmanager
def serve(script: Step | Sequence[Step]) -> Iterator[BaseURL]:
    """Run the server for the ``with`` block; yields its base URL (see module doc)."""
    steps: list[Step] = [script] if isinstance(script, str) or callable(script) else list(script)
    if not steps:
        raise ValueError("judge_server: empty script")
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"_raw": raw.decode("utf-8", "replace")}
            with lock:
                received.append({"path": self.path, "body": body,
                                 "headers": {k.lower(): v for k, v in self.headers.items()}})
                step = steps[min(len(received), len(steps)) - 1]
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            r = reply_for(step, body, token)
            if r.delay_s:
                time.sleep(r.delay_s)
            if r.status != 200:
                return self._send(r.status, {"error": {"message": r.error, "type": "server_error",
                                                       "code": r.status}})
            prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            completion_words = len(r.content.split())
            self._send(200, {
                "id": f"chatcmpl-test-{len(received)}", "object": "chat.completion",
                "created": int(time.time()), "model": body.get("model", "test"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": r.content}}],
                "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion_words,
                          "total_tokens": prompt_words + completion_words},
            })

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left (slow mode)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a sleeping "slow" handler must not block shutdown
    # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="judge-server", daemon=True)
    thread.start()
    url = BaseURL(f"http://127.0.0.1:{server.server_address[1]}")
    url.requests = received
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
