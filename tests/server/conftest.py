"""Fixtures of the sidecar tests: a trained tiny policy, live servers on loopback.

The vLLM engine starts once per test session (``vllm_server``); so does the real ``vllm serve``
of the OpenAI-compatible test (started early, in the background, so that its start-up overlaps
the other tests). Servers run under uvicorn on 127.0.0.1 with a free port and are spoken to over
real HTTP.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from helpers import stop_process

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

# vLLM on CPU starts EngineCore and its worker as two spawned processes; with V1
# multiprocessing off the worker runs inside EngineCore (AsyncLLM still uses a separate
# EngineCore process): one interpreter start fewer, about half the start-up time here. Its
# OpenMP threads are left unpinned: pinned to the two cores that the HTTP server, the clients
# and the tests share, decoding intermittently slowed to ~100 ms per step.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

API_KEY = "test-key"
ADMIN_KEY = "test-admin-key"
VLLM_AVAILABLE = importlib.util.find_spec("vllm") is not None
ENGINE_KWARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "kv_cache_memory_bytes": 256 * 2**20}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    app: object
    server: object
    thread: threading.Thread
    backend: str
    extra: dict = field(default_factory=dict)

    @property
    def state(self):  # the app's promptloop.server.state.AppState
        return self.app.state.promptloop

    def client(self, key: str | None = API_KEY, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 120.0), **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_server(settings, *, ready_timeout: float = 900.0) -> LiveServer:
    import uvicorn

    from promptloop.server import create_app

    port = free_port()
    settings.port = port
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            limit_concurrency=settings.max_concurrency, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", app, server, thread, settings.backend)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if live.state.load_error:
            live.stop()
            raise RuntimeError(f"server failed to load: {live.state.load_error}")
        try:
            if httpx.get(live.url + "/ready", timeout=5).status_code == 200:
                return live
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    live.stop()
    raise TimeoutError("server not ready in time")


def server_settings(policy_dir, adapter_dir, backbone_dir, backend: str, **overrides):
    from promptloop.server import Settings

    kwargs = {
        "policy": str(policy_dir), "backend": backend, "adapters": {"oil": str(adapter_dir)}, "adapter": None,
        "api_key": API_KEY, "admin_key": ADMIN_KEY, "backbones": {"sd": str(backbone_dir)},
        "max_body_bytes": 8 * 2**20, "max_image_pixels": 1024 * 1024, "max_request_pixels": 2 * 1024 * 1024,
        "receive_timeout_s": 2.0, "request_timeout_s": 120.0,
        "max_new_tokens": 24, "device": "cpu",
    }
    if backend == "vllm":
        kwargs.update(ENGINE_KWARGS, enable_lora=True, max_lora_rank=16)
    kwargs.update(overrides)
    return Settings(**kwargs)


@pytest.fixture(scope="session")
def trained_dirs(tmp_path_factory):
    """(policy_dir, adapter_dir): the tiny Qwen2-VL taught BASE_ANSWER and a LoRA taught ADAPTER_ANSWER."""
    from trained_policy import save_trained_policy

    root = tmp_path_factory.mktemp("trained-policy")
    return save_trained_policy(root / "policy", root / "adapter-oil")


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory):
    from promptloop.testing import save_tiny_pipeline

    return save_tiny_pipeline("sd", tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def openai_endpoint(trained_dirs, tmp_path_factory):
    """A real ``vllm serve`` of the trained tiny policy (and its adapter as model 'oil'), started
    in the background; ``wait()`` blocks until it answers."""
    if not VLLM_AVAILABLE:
        pytest.skip("vllm is not installed")
    from promptloop.policies.vllm import compile_guard_env

    policy_dir, adapter_dir = trained_dirs
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "vllm-serve.log"
    # `vllm serve` itself; through the server module because the CLI's `--version` looks up the
    # distribution "vllm", which the CPU build (distribution "vllm-cpu") does not provide.
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(policy_dir),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
        "--kv-cache-memory-bytes", str(256 * 2**20), "--gpu-memory-utilization", "0.1",
        "--limit-mm-per-prompt", '{"image": 1}', "--enable-lora", "--max-lora-rank", "16",
        "--lora-modules", f"oil={adapter_dir}", "--disable-log-stats",
    ]
    handle = open(log, "wb")  # noqa: SIM115 - vllm serve writes to it until the fixture ends
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **compile_guard_env()})
    url = f"http://127.0.0.1:{port}/v1"

    class Endpoint:
        base_url = url
        process = proc
        log_path = log

        @staticmethod
        def wait(timeout: float = 900.0) -> str:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            raise TimeoutError(f"vllm serve not up in time:\n{log.read_text()[-3000:]}")

    yield Endpoint
    stop_process(proc)
    handle.close()


@pytest.fixture(scope="session")
def vllm_server(trained_dirs, sd_dir, request):
    """The sidecar with the vLLM backend (one engine for the whole session)."""
    if not VLLM_AVAILABLE:
        pytest.skip("vllm is not installed")
    # Start `vllm serve` now so that its start-up overlaps ours and the tests in between.
    request.getfixturevalue("openai_endpoint")
    policy_dir, adapter_dir = trained_dirs
    live = start_server(server_settings(policy_dir, adapter_dir, sd_dir, "vllm"))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def transformers_server(trained_dirs, sd_dir):
    """The sidecar with the transformers backend (cheap: no engine processes)."""
    policy_dir, adapter_dir = trained_dirs
    live = start_server(server_settings(policy_dir, adapter_dir, sd_dir, "transformers"))
    yield live
    live.stop()


@pytest.fixture(params=["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def live_server(request):
    """Each backend's sidecar in turn (the vLLM one only where vLLM is installed)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session")
def tf_policy(trained_dirs):
    """The in-process transformers policy with the same weights as the servers."""
    from promptloop.policies import SamplingConfig, TransformersPolicy

    return TransformersPolicy.from_pretrained(trained_dirs[0], device="cpu", sampling=SamplingConfig(max_new_tokens=24))
