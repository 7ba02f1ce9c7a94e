"""`accelerate launch --num_processes 2` on CPU (gloo): GRPO steps keep identical adapters on
both processes, also when one process's rollouts yield no trainable action."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import SMALL

#: Longer than the tiny policy's context (4096 tokens): every policy call on it fails before
#: generating, so its rollouts fall back without tokens and yield no trainable action.
TOO_LONG = " ".join(f"w{i}" for i in range(6000))


def _launch(tmp_path: Path, timeout: float, **overrides) -> subprocess.CompletedProcess:
    """Run ``promptloop.training.cli grpo`` on 2 CPU processes; kill the whole group on timeout
    (a collective that never completes would otherwise hang the test)."""
    settings = {**SMALL, "output_dir": str(tmp_path), "save_steps": 0, "log_fingerprints": True, **overrides}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "promptloop.training.cli", "grpo"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the 2-process run did not finish in {timeout:.0f} s (a collective hang?)\n{err[-3000:]}")
    finally:
        if proc.poll() is None:  # interrupted otherwise (e.g. pytest-timeout): leave no process behind
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _fingerprints(tmp_path: Path) -> list[list[dict]]:
    return [[json.loads(line) for line in Path(tmp_path, f"fingerprints-{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # above the run's own timeout, which kills the processes it started
def test_two_processes_keep_identical_adapters_even_when_one_has_no_actions(tmp_path, warm_policy_dir):
    # Two prompts, one per process at every step: the process holding TOO_LONG has no action, so
    # this also checks that it does not hang the other in a collective.
    done = _launch(tmp_path, 800, max_steps=2, prompts=["a red fox in the snow", TOO_LONG])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Averaged over the processes: 2 actions on one, 0 on the other.
    assert [m["train/actions"] for m in metrics] == [1.0, 1.0]
    prints = _fingerprints(tmp_path)
    assert [p["step"] for p in prints[0]] == [1, 2] == [p["step"] for p in prints[1]]
    assert prints[0] == prints[1], "the two processes hold different adapters"
    assert prints[0][0]["sha256"] != prints[0][1]["sha256"], "the other process's actions should move the adapter"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
