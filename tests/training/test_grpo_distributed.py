"""`accelerate launch --num_processes 2` on CPU (gloo): two GRPO steps, identical adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import SMALL


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_adapters(tmp_path, warm_policy_dir):
    overrides = {**SMALL, "output_dir": str(tmp_path), "max_steps": 2, "save_steps": 0, "log_fingerprints": True}
    args = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "promptloop.training.cli", "grpo"]
    for arg in args:
        command += ["--set", arg]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    prints = [[json.loads(line) for line in Path(tmp_path, f"fingerprints-{rank}.jsonl").read_text().splitlines()]
              for rank in (0, 1)]
    assert [p["step"] for p in prints[0]] == [1, 2] == [p["step"] for p in prints[1]]
    assert prints[0] == prints[1], "the two processes hold different adapters"
    assert prints[0][0]["sha256"] != prints[0][1]["sha256"], "the adapter should change between steps"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
