"""A small GRPO config on the tiny models, shared by the trainer tests."""

from __future__ import annotations

from promptloop.training.config import load_config
from promptloop.training.grpo.config import GRPOConfig

#: Small enough for a 2-core CPU: 1 prompt x 2 rollouts, 4 denoising steps, 1 refinement each.
SMALL = {
    "device": "cpu", "backbone": "tiny:sd", "policy": "tiny-warm", "prompts": "tiny",
    "eval_prompts": "tiny-heldout", "num_inference_steps": 4, "schedule": "random:1", "eval_schedule": "evenly:1",
    "preview_size": 56, "per_device_prompts": 1, "num_generations": 2, "max_completion_length": 24,
    "learning_rate": 1e-3, "eval_steps": 0, "save_steps": 1, "save_total_limit": None, "progress": False,
    "report_to": "none", "fallback_penalty": 0.5,
}


def small_config(tmp_path, **overrides) -> GRPOConfig:
    return load_config(GRPOConfig, None, {**SMALL, "output_dir": str(tmp_path), **overrides})
