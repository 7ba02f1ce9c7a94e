"""The GRPO trainer end to end on tiny models: exact resume, a written adapter that loads and
changes the policy's output, and metrics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_config
from promptloop.training.grpo.trainer import GRPOTrainer


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_resume_is_bit_identical_and_the_adapter_loads(tmp_path, warm_policy_dir):
    full = GRPOTrainer(small_config(tmp_path / "full", max_steps=3))
    out = full.train()
    # Stopped after step 1, resumed to step 3 in a new process-like trainer.
    resumed = GRPOTrainer(small_config(tmp_path / "resumed", max_steps=3,
                                       resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-1")))
    out_resumed = resumed.train()
    a, b = _adapter(out), _adapter(out_resumed)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # ... and training did move the adapter away from its initial value.
    start = _adapter(tmp_path / "full" / "checkpoint-1" / "adapter")
    assert any(not torch.equal(a[k], start[k]) for k in a)

    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for key in ("reward/mean", "reward/std", "reward/jpeg_compressibility/mean", "train/kl", "train/clip_ratio",
                "train/entropy", "train/completion_length", "train/fallback_rate", "time/rollout_diffusion_s",
                "time/rollout_policy_s", "time/rollout_preview_s", "time/reward_s", "time/scoring_s",
                "time/update_s"):
        assert key in lines[0], key

    # The adapter loads in the transformers backend, unchanged, and changes its output.
    from promptloop import Observation
    from promptloop.policies import SamplingConfig, TransformersPolicy

    sampling = SamplingConfig(max_new_tokens=24, return_logprobs=True)
    base = TransformersPolicy.from_pretrained(warm_policy_dir, device="cpu", sampling=sampling)
    tuned = TransformersPolicy.from_pretrained(warm_policy_dir, adapter=out, device="cpu", sampling=sampling)
    obs = [Observation("a red fox in the snow", "a red fox in the snow", 1, 4)]
    assert base.refine(obs)[0].logprobs != tuned.refine(obs)[0].logprobs
