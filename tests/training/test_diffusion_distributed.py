"""`accelerate launch --num_processes 2` on CPU (gloo) for DDPO and B²: two epochs/stages, the
processes hold identical adapters after each, and the run ends (a hang fails on the timeout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "ddpo": {"num_inference_steps": 4, "sample_batch_size": 4, "train_batch_size": 2, "num_inner_epochs": 1},
    # 2 prompts x 5 branches per process; thresholds at +-1.2 make the processes keep different
    # numbers of siblings (and some stages none), which the trainer must bring into step.
    "b2": {"num_inference_steps": 6, "split_step_min": 4, "split_step_max": 6, "sample_batch_size": 2,
           "pos_threshold": 1.2, "neg_threshold": -1.2, "num_inner_epochs": 1},
}


def launch(kind: str, tmp_path: Path, steps: int) -> subprocess.CompletedProcess:
    preset = ROOT / "training" / "configs" / f"{kind}_tiny.yaml"
    overrides = {**SMALL[kind], "output_dir": str(tmp_path), "max_steps": steps, "save_steps": 0,
                 "log_fingerprints": True, "progress": False, "report_to": "none"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "promptloop.training.cli", kind, "--config", str(preset)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("kind,steps", [("ddpo", 2), ("b2", 3)])
def test_two_cpu_processes_keep_identical_adapters(kind, steps, tmp_path):
    done = launch(kind, tmp_path, steps)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    prints = [[json.loads(line) for line in (tmp_path / f"fingerprints-{rank}.jsonl").read_text().splitlines()]
              for rank in (0, 1)]
    assert [p["step"] for p in prints[0]] == list(range(1, steps + 1)) == [p["step"] for p in prints[1]]
    assert prints[0] == prints[1], "the two processes hold different adapters"
    assert len({p["sha256"] for p in prints[0]}) > 1, "the adapter should change during the run"
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").exists()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == steps
