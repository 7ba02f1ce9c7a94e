"""Retries and deadlines of the server-calling policies (HTTPPolicy, OpenAIChatPolicy, sync and
async), against a real HTTP server on loopback that answers from a script."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from promptloop.policies.http import HTTPPolicy
from promptloop.policies.openai import OpenAIChatPolicy, OpenAIError
from promptloop.policies.retry import Retry, Retryable
from promptloop.refinement import Fallback, Observation

OBS = [Observation("a cat", "a cat, current", 1, 4)]
CHAT = [[{"role": "user", "content": "rewrite: a cat"}]]


def refine_answer(text: str = "a cat, oil painting") -> dict:
    return {"refinements": [{"text": text}], "model": "tiny", "latency_s": 0.0}


def chat_answer(text: str = "a cat, oil painting") -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


class ScriptedServer:
    """Answers the n-th request with ``script[n]`` = (status, seconds to wait first, JSON body);
    the last entry repeats. Records when each request arrived."""

    def __init__(self) -> None:
        self.script: list[tuple[int, float, dict]] = [(200, 0.0, {})]
        self.arrivals: list[float] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.arrivals.append(time.monotonic())
                status, delay, body = server.script[min(len(server.arrivals), len(server.script)) - 1]
                time.sleep(delay)
                payload = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up first
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, *script: tuple[int, float, dict]) -> ScriptedServer:
        self.script, self.arrivals = list(script), []
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = ScriptedServer()
    yield s
    s.close()


# -- HTTPPolicy -----------------------------------------------------------------------------------
def test_sidecar_client_retries_server_errors_then_succeeds(server):
    server.answer((503, 0, {"detail": "busy"}), (502, 0, {}), (200, 0, refine_answer()))
    ref = HTTPPolicy(server.url, retries=2, backoff_s=0.05).refine(OBS)[0]
    assert ref.fallback is None and ref.text == "a cat, oil painting"
    assert len(server.arrivals) == 3
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, "the pause doubles"


def test_sidecar_client_gives_up_after_its_retries(server):
    server.answer((503, 0, {"detail": "still busy"}))
    ref = HTTPPolicy(server.url, retries=2, backoff_s=0.01).refine(OBS)[0]
    assert ref.fallback is Fallback.ERROR and ref.text == "a cat, current"
    assert "503" in ref.error and "still busy" in ref.error
    assert len(server.arrivals) == 3


def test_sidecar_client_does_not_retry_client_mistakes(server):
    server.answer((422, 0, {"detail": "bad image"}))
    ref = HTTPPolicy(server.url, retries=3, backoff_s=0.01).refine(OBS)[0]
    assert ref.fallback is Fallback.ERROR and "422" in ref.error and "bad image" in ref.error
    assert len(server.arrivals) == 1


def test_sidecar_client_deadline_covers_attempts_and_pauses(server):
    # (Timings are loose: the machines running the suite are busy. Without the deadline each of
    # these calls would take 6 s or more.)
    policy = HTTPPolicy(server.url, timeout_s=1.0, retries=5, backoff_s=0.05)
    policy.refine(OBS)  # warm up: imports, connection pool
    server.answer((200, 6.0, refine_answer()))  # slower than the deadline
    start = time.monotonic()
    ref = policy.refine(OBS)[0]
    elapsed = time.monotonic() - start
    assert ref.fallback is Fallback.TIMEOUT and "within 1 s" in ref.error
    assert 0.95 <= elapsed < 4.0
    server.answer((503, 0, {}))  # a pause that would end past the deadline is not taken
    start = time.monotonic()
    ref = HTTPPolicy(server.url, timeout_s=1.0, retries=5, backoff_s=6.0).refine(OBS)[0]
    assert ref.fallback is Fallback.TIMEOUT and time.monotonic() - start < 4.0
    assert len(server.arrivals) == 1


def test_sidecar_gateway_timeouts_end_as_timeouts(server):
    server.answer((504, 0, {"detail": "policy timed out"}))
    ref = HTTPPolicy(server.url, retries=1, backoff_s=0.01).refine(OBS)[0]
    assert ref.fallback is Fallback.TIMEOUT and "504" in ref.error
    assert len(server.arrivals) == 2


# -- OpenAIChatPolicy -----------------------------------------------------------------------------
def test_openai_client_retries_rate_limits_sync_and_async(server):
    policy = OpenAIChatPolicy(server.url, model="m", retries=2, backoff_s=0.02)
    server.answer((429, 0, {"error": {"message": "slow down"}}), (200, 0, chat_answer("sync answer")))
    assert policy.generate(CHAT)[0].text == "sync answer"
    assert len(server.arrivals) == 2
    server.answer((503, 0, {}), (503, 0, {}), (200, 0, chat_answer("async answer")))
    assert asyncio.run(_agenerate(policy))[0].text == "async answer"
    assert len(server.arrivals) == 3
    policy.close()


async def _agenerate(policy):
    try:
        return await policy.agenerate(CHAT)
    finally:
        await policy.aclose()


def test_openai_client_errors_and_deadline(server):
    policy = OpenAIChatPolicy(server.url, model="m", retries=3, backoff_s=0.01, timeout_s=1.0)
    server.answer((500, 0, {"error": {"message": "model crashed"}}))
    with pytest.raises(OpenAIError, match="500: model crashed"):
        policy.generate(CHAT)
    assert len(server.arrivals) == 1, "500 is not retried"
    server.answer((200, 6.0, chat_answer()))  # slower than the deadline
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="within 1 s"):
        policy.generate(CHAT)
    assert time.monotonic() - start < 4.0
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="within 1 s"):
        asyncio.run(_agenerate(policy))
    assert time.monotonic() - start < 4.0
    policy.close()


# -- the helper itself ----------------------------------------------------------------------------
def test_retry_passes_the_time_left_and_raises_the_last_error():
    seen: list[float | None] = []

    def attempt(timeout):
        seen.append(timeout)
        time.sleep(0.05)
        raise Retryable(ConnectionError(f"try {len(seen)}"))

    with pytest.raises(ConnectionError, match="try 3"):
        Retry(retries=2, backoff_s=0.0, deadline_s=10).call(attempt)
    assert seen[0] <= 10 and seen[0] > seen[1] > seen[2]
    seen.clear()
    with pytest.raises(ConnectionError, match="try 1"):
        Retry(retries=0).call(attempt)
    assert seen == [None]

    def broken(timeout):
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        Retry(retries=5).call(broken)
    with pytest.raises(ValueError):
        Retry(deadline_s=0)
