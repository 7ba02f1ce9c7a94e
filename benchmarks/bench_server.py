"""Sidecar throughput: refinements per second with 1, 4 and 16 concurrent clients.

    python benchmarks/bench_server.py                 # vllm (when installed) and transformers
    python benchmarks/bench_server.py --backends transformers --seconds 5

For each backend the sidecar runs as its own process (``python -m promptloop.server``, the same
code as ``promptloop serve``) on loopback, serving the tiny Qwen2-VL built in code; clients are
asyncio tasks in this process, each sending one ``POST /refine`` (a 64x64 PNG preview) after the
other. Every concurrency level runs for the same wall time after a warm-up. Figures are printed
as ratios to the same backend's 1-client throughput, measured in the same run, with p50/p99
latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(i: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (i * 37 % 256, 90, 160)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def start_server(backend: str, policy_dir: Path, args, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "promptloop.server", "--policy", str(policy_dir), "--backend", backend,
           "--port", str(port), "--max-new-tokens", str(args.max_new_tokens), "--log-level", "warning",
           "--dtype", "float32"]
    if backend == "vllm":
        cmd += ["--enforce-eager", "--max-model-len", "2048", "--kv-cache-mb", "512"]
    else:
        cmd += ["--device", "cpu", "--batch-size", "16", "--batch-wait-ms", str(args.batch_wait_ms)]
    env = dict(os.environ)
    if not args.vllm_multiprocessing:
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{backend} server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"{backend} server not ready:\n{log.read_text()[-3000:]}")


async def run_level(url: str, clients: int, seconds: float, warmup: int) -> dict:
    import httpx

    images = [_png(i) for i in range(32)]
    latencies: list[float] = []
    errors = 0

    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=clients + 4)) as client:

        async def one(i: int) -> float:
            body = {"prompt": f"a photo of subject {i}", "step": i % 8, "num_steps": 10, "image": images[i % 32]}
            start = time.perf_counter()
            r = await client.post("/refine", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
            return time.perf_counter() - start

        await asyncio.gather(*(one(i) for i in range(max(warmup, clients))))  # warm connections and caches
        stop_at = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                try:
                    latencies.append(await one(next(counter)))
                except Exception:  # noqa: BLE001 - counted
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "done": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="auto", help="comma list of vllm,transformers (auto: both if vllm is installed)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured wall time per concurrency level")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="transformers backend micro-batching window")
    parser.add_argument("--vllm-multiprocessing", action="store_true",
                        help="keep vLLM's worker in its own process (default on CPU here: in the engine process)")
    parser.add_argument("--policy", type=Path, default=None, help="policy checkpoint (default: the tiny Qwen2-VL)")
    args = parser.parse_args()

    import importlib.util

    if args.backends == "auto":
        backends = (["vllm"] if importlib.util.find_spec("vllm") else []) + ["transformers"]
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    levels = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="promptloop-bench-") as tmp:
        tmp = Path(tmp)
        policy_dir = args.policy
        if policy_dir is None:
            from promptloop.testing.policy import save_tiny_qwen2vl

            policy_dir = save_tiny_qwen2vl(tmp / "tiny-qwen2vl")
        results: dict[str, list[dict]] = {}
        for backend in backends:
            print(f"starting the {backend} sidecar ...", flush=True)
            t0 = time.perf_counter()
            proc, url = start_server(backend, policy_dir, args, tmp / f"{backend}.log")
            print(f"  ready in {time.perf_counter() - t0:.0f} s", flush=True)
            try:
                results[backend] = []
                for clients in levels:
                    r = asyncio.run(run_level(url, clients, args.seconds, args.warmup))
                    results[backend].append(r)
                    print(f"  {clients:>3} clients: {r['rps']:7.1f} refinements/s  p50 {r['p50'] * 1000:7.1f} ms  "
                          f"p99 {r['p99'] * 1000:7.1f} ms  ({r['done']} done, {r['errors']} errors)", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print()
    print(f"Sidecar throughput, tiny Qwen2-VL, {args.max_new_tokens} new tokens max, 64x64 PNG preview, "
          f"{os.cpu_count()} CPU cores; ratio = refinements/s relative to 1 client of the same backend")
    print(f"{'backend':<13}{'clients':>8}{'refin./s':>11}{'ratio':>8}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for backend, rows in results.items():
        base = rows[0]["rps"] if rows and rows[0]["clients"] == 1 else float("nan")
        for r in rows:
            print(f"{backend:<13}{r['clients']:>8}{r['rps']:>11.1f}{r['rps'] / base:>7.2f}x"
                  f"{r['p50'] * 1000:>10.1f}{r['p99'] * 1000:>10.1f}{r['errors']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
