"""Sidecar throughput: refinements per second with 1, 4 and 16 concurrent clients.

    python benchmarks/bench_server.py                 # vllm (when installed) and transformers
    python benchmarks/bench_server.py --backends transformers --seconds 5

For each backend the sidecar runs as its own process (``python -m promptloop.server``, the same
code as ``promptloop serve``) on loopback, serving the tiny Qwen2-VL built in code; clients are
asyncio tasks in this process, each sending one ``POST /refine`` (a 64x64 PNG preview) after the
other. All servers start first; then every (backend, concurrency) pair is measured for the same
wall time in each of several interleaved rounds, so a burst of load from elsewhere on the machine
hits all of them alike. Figures are the medians over rounds, printed as ratios to the same
backend's 1-client throughput measured in the same run, with p50/p99 latency.
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

#: vLLM-CPU settings for a small machine that the engine shares with the HTTP server and the
#: clients: the model worker runs inside the engine process (one interpreter fewer), and its OpenMP
#: threads are not pinned to cores (pinned threads stall whenever another process runs on their
#: core). Applied only on machines without CUDA, and only where not already set.
CPU_TUNING = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


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
    if backend == "vllm" and args.cpu_tuning:
        env.update({k: v for k, v in CPU_TUNING.items() if k not in os.environ})
    with open(log, "wb") as out:  # the server holds its own copy of the handle
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
    return {"clients": clients, "latencies": latencies, "errors": errors, "rps": len(latencies) / wall}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="auto", help="comma list of vllm,transformers (auto: both if vllm is installed)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels; the first is the reference (1)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured wall time per level and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="tokens per refinement (the random tiny policy always writes this many; a refined "
                        "prompt for CLIP-conditioned backbones is up to 77 tokens)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="transformers backend micro-batching window")
    parser.add_argument("--no-cpu-tuning", dest="cpu_tuning", action="store_false",
                        help=f"do not set {', '.join(f'{k}={v}' for k, v in CPU_TUNING.items())} for vLLM on CPU")
    parser.add_argument("--policy", type=Path, default=None, help="policy checkpoint (default: the tiny Qwen2-VL)")
    args = parser.parse_args()

    import importlib.util

    if args.backends == "auto":
        backends = (["vllm"] if importlib.util.find_spec("vllm") else []) + ["transformers"]
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    levels = [int(c) for c in args.clients.split(",")]
    import torch

    args.cpu_tuning = args.cpu_tuning and not torch.cuda.is_available()

    with tempfile.TemporaryDirectory(prefix="promptloop-bench-") as tmp:
        tmp = Path(tmp)
        policy_dir = args.policy
        if policy_dir is None:
            from promptloop.testing.policy import save_tiny_qwen2vl

            policy_dir = save_tiny_qwen2vl(tmp / "tiny-qwen2vl")
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            for backend in backends:  # all servers up first, then measured in interleaved rounds
                print(f"starting the {backend} sidecar ...", flush=True)
                t0 = time.perf_counter()
                servers[backend] = start_server(backend, policy_dir, args, tmp / f"{backend}.log")
                print(f"  ready in {time.perf_counter() - t0:.0f} s", flush=True)
            runs: dict[tuple[str, int], list[dict]] = {(b, c): [] for b in backends for c in levels}
            for round_index in range(args.rounds):
                for backend in backends:
                    line = []
                    for clients in levels:
                        r = asyncio.run(run_level(servers[backend][1], clients, args.seconds, args.warmup))
                        runs[backend, clients].append(r)
                        line.append(f"{clients} clients {r['rps']:6.1f}/s")
                    print(f"  round {round_index + 1} {backend:<13}" + "  ".join(line), flush=True)
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
            for proc, _ in servers.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print()
    print(f"Sidecar throughput, tiny Qwen2-VL, {args.max_new_tokens} new tokens, 64x64 PNG preview, "
          f"{os.cpu_count()} CPU cores, {args.rounds} interleaved rounds of {args.seconds:g} s per level.")
    print("refin./s: median over rounds; ratio: median over rounds of refin./s relative to the same backend's "
          "1-client figure of that round; latency over all rounds.")
    if args.cpu_tuning and "vllm" in backends:
        print("vLLM environment: " + ", ".join(f"{k}={os.environ.get(k, v)}" for k, v in CPU_TUNING.items()))
    print(f"{'backend':<13}{'clients':>8}{'refin./s':>11}{'ratio':>8}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}{'errors':>8}")
    for backend in backends:
        for clients in levels:
            rows = runs[backend, clients]
            rps = statistics.median(r["rps"] for r in rows)
            # per round, against that round's 1-client figure (measured seconds apart), then the median
            ratio = statistics.median(r["rps"] / max(b["rps"], 1e-9) for r, b in zip(rows, runs[backend, levels[0]]))
            lat = [x for r in rows for x in r["latencies"]]
            print(f"{backend:<13}{clients:>8}{rps:>11.1f}{ratio:>7.2f}x{_percentile(lat, 0.5) * 1000:>10.1f}"
                  f"{_percentile(lat, 0.99) * 1000:>10.1f}{len(lat):>10}{sum(r['errors'] for r in rows):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
