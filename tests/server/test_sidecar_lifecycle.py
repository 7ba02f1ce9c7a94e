"""Readiness, timeouts and engine failures, with a scripted policy (no model) behind real HTTP.

The policy's asynchronous generation is scripted (a delay, a failure); everything around it is
real: the engine's refine path, the library's ``arefine`` and the app under uvicorn.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import free_port
from scripted import ScriptedEngine

from promptloop.server.backbones import BackboneStore
from promptloop.server.engine import Engine


def _serve(engine: Engine, **settings_kwargs):
    import uvicorn

    from promptloop.server import Settings, create_app

    port = free_port()
    settings = Settings(policy="scripted", backend="transformers", port=port, warmup=False, **settings_kwargs)
    app = create_app(settings, engine=engine, backbones=BackboneStore())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(timeout=30)

    return url, stop


BODY = {"prompt": "a cat", "step": 1, "num_steps": 4}


def test_ready_only_after_the_policy_has_loaded():
    gate = threading.Event()
    url, stop = _serve(ScriptedEngine(start_gate=gate))
    try:
        assert httpx.get(url + "/health").status_code == 200
        ready = httpx.get(url + "/ready")
        assert ready.status_code == 503 and ready.json()["error"] == "loading"
        early = httpx.post(url + "/refine", json=BODY)
        assert early.status_code == 503 and "still loading" in early.json()["detail"]
        assert early.headers.get("retry-after") == "5"
        gate.set()
        for _ in range(200):
            if httpx.get(url + "/ready").status_code == 200:
                break
            time.sleep(0.02)
        assert httpx.post(url + "/refine", json=BODY).json()["prompt"] == "a scripted prompt"
    finally:
        stop()


def test_a_policy_that_fails_to_load_is_reported():
    url, stop = _serve(ScriptedEngine(fail_start=True))
    try:
        for _ in range(200):
            ready = httpx.get(url + "/ready")
            if ready.json()["error"] != "loading":
                break
            time.sleep(0.02)
        assert ready.status_code == 503 and "weights not found" in ready.json()["detail"]
        refine = httpx.post(url + "/refine", json=BODY)
        assert refine.status_code == 503 and "failed to load" in refine.json()["detail"]
    finally:
        stop()


def test_slow_policy_gets_504_in_time_and_the_request_is_cancelled():
    engine = ScriptedEngine(delay_s=30)
    url, stop = _serve(engine, request_timeout_s=0.5)
    try:
        start = time.monotonic()
        r = httpx.post(url + "/refine", json=BODY, timeout=10)
        assert r.status_code == 504 and "0.5 s" in r.json()["detail"]
        assert time.monotonic() - start < 5
        assert engine.policy.cancelled == 1  # the generation was aborted, not left running
        assert httpx.get(url + "/health").status_code == 200
    finally:
        stop()


def test_engine_failure_is_503_not_500():
    url, stop = _serve(ScriptedEngine(fail_generate=True))
    try:
        r = httpx.post(url + "/refine", json=BODY)
        assert r.status_code == 503 and "engine died" in r.json()["detail"]
        metrics = httpx.get(url + "/metrics").text
        assert 'promptloop_http_requests_total{endpoint="/refine",status="503"} 1.0' in metrics
    finally:
        stop()


@pytest.mark.parametrize("path", ["/admin/adapter"])
def test_admin_endpoints_are_off_without_keys(path):
    url, stop = _serve(ScriptedEngine())
    try:
        r = httpx.post(url + path, json={"name": None})
        assert r.status_code == 403 and "admin endpoints are off" in r.json()["detail"]
    finally:
        stop()
