"""`promptloop serve` as a process (start, serve, graceful stop), and the synchronous VLLMPolicy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from conftest import ENGINE_KWARGS, VLLM_AVAILABLE, free_port
from PIL import Image
from trained_policy import ADAPTER_ANSWER, BASE_ANSWER

from promptloop.policies.http import HTTPPolicy
from promptloop.refinement import Observation


def test_serve_command_runs_and_stops_gracefully(trained_dirs, tmp_path):
    policy_dir, adapter_dir = trained_dirs
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "promptloop.server", "--policy", str(policy_dir), "--backend", "transformers",
           "--adapter", f"oil={adapter_dir}", "--default-adapter", "none", "--port", str(port),
           "--api-key", "k", "--max-new-tokens", "24", "--device", "cpu", "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            policy = HTTPPolicy(f"http://127.0.0.1:{port}", api_key="k", timeout_s=60)
            assert policy.wait_ready(timeout_s=240), log.read_text()[-2000:]
            obs = [Observation("a cat", "a cat", 1, 4, preview=Image.new("RGB", (64, 64), "blue"))]
            assert policy.refine(obs)[0].text == BASE_ANSWER
            assert HTTPPolicy(policy.url, api_key="k", adapter="oil").refine(obs)[0].text == ADAPTER_ANSWER
            assert policy.info()["adapters"] == {"oil": str(adapter_dir)}
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down (lifespan included), then re-raises the signal: -SIGTERM
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_serve_command_exits_non_zero_when_the_policy_cannot_load(tmp_path):
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "promptloop.server", "--policy", str(tmp_path / "missing"), "--backend", "transformers",
         "--port", str(port), "--log-level", "error"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 1
    assert "failed to load" in proc.stderr


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vllm is not installed")
def test_sync_vllm_policy_in_a_script(trained_dirs, tmp_path):
    """VLLMPolicy (the synchronous vllm.LLM) from a script, the way users call it, with a LoRA
    adapter loaded at start and one added later."""
    policy_dir, adapter_dir = trained_dirs
    script = tmp_path / "script.py"
    script.write_text(f"""
import json
from PIL import Image
from promptloop.policies import SamplingConfig
from promptloop.policies.vllm import VLLMPolicy
from promptloop.refinement import Observation

if __name__ == "__main__":
    policy = VLLMPolicy({str(policy_dir)!r}, adapter={str(adapter_dir)!r}, max_lora_rank=16,
                        sampling=SamplingConfig(max_new_tokens=24, return_logprobs=True), **{ENGINE_KWARGS!r})
    obs = [Observation("a cat", "a cat", 1, 4, preview=Image.new("RGB", (64, 64), "red")),
           Observation("a dog", "a dog", 2, 4)]
    with_adapter = policy.refine(obs)
    policy.set_adapter(None)
    base = policy.refine(obs)
    policy.add_adapter("again", {str(adapter_dir)!r})
    again = policy.generate([policy.messages_for(o) for o in obs], adapter="again")
    plan = policy.plan(["a cat"], [1, 2], 4)
    print("RESULT" + json.dumps({{
        "adapter": [r.text for r in with_adapter], "base": [r.text for r in base],
        "again": [g.text for g in again], "logprobs": [len(r.logprobs) == len(r.token_ids) for r in base],
        "plan": len(plan[0]),
    }}))
    policy.shutdown()
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    import json

    result = json.loads(lines[0][len("RESULT"):])
    assert result["adapter"] == [ADAPTER_ANSWER] * 2
    assert result["base"] == [BASE_ANSWER] * 2
    assert result["again"] == [ADAPTER_ANSWER] * 2
    assert result["logprobs"] == [True, True] and result["plan"] == 2
