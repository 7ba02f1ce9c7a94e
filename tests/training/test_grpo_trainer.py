"""The GRPO trainer end to end on tiny models: exact resume, logged metrics, and a written
adapter that loads unchanged in the transformers backend, the sidecar and vLLM and changes
their output."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import small_config

from promptloop import Observation
from promptloop.policies import SamplingConfig
from promptloop.training.grpo.trainer import GRPOTrainer

pytestmark = pytest.mark.slow
OBS = [Observation("a red fox in the snow", "a red fox in the snow", 1, 4)]


def _adapter(path):
    return load_file(str(Path(path) / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, warm_policy_dir):
    root = tmp_path_factory.mktemp("grpo")
    full = GRPOTrainer(small_config(root / "full", max_steps=3)).train()
    # A run stopped after step 1 and resumed (a fresh trainer) up to step 3.
    resumed = GRPOTrainer(small_config(root / "resumed", max_steps=3,
                                       resume_from_checkpoint=str(root / "full" / "checkpoint-1"))).train()
    return root, full, resumed


def test_resume_is_bit_identical(runs):
    root, full, resumed = runs
    a, b = _adapter(full), _adapter(resumed)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    start = _adapter(root / "full" / "checkpoint-1" / "adapter")
    assert any(not torch.equal(a[k], start[k]) for k in a), "training should move the adapter"


def test_metrics_are_logged_per_step(runs):
    root, _, _ = runs
    lines = [json.loads(line) for line in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for key in ("reward/mean", "reward/std", "reward/jpeg_compressibility/mean", "reward/jpeg_compressibility/std",
                "train/kl", "train/clip_ratio", "train/entropy", "train/completion_length", "train/fallback_rate",
                "time/rollout_diffusion_s", "time/rollout_policy_s", "time/rollout_preview_s", "time/reward_s",
                "time/scoring_s", "time/update_s"):
        assert key in lines[0], key
    assert lines[0]["train/entropy"] > 0 and lines[0]["train/completion_length"] > 0


def test_adapter_loads_in_transformers_and_changes_the_output(runs, warm_policy_dir):
    from promptloop.policies import TransformersPolicy

    _, full, _ = runs
    sampling = SamplingConfig(max_new_tokens=24, return_logprobs=True)
    base = TransformersPolicy.from_pretrained(warm_policy_dir, device="cpu", sampling=sampling)
    tuned = TransformersPolicy.from_pretrained(warm_policy_dir, adapter=full, device="cpu", sampling=sampling)
    assert base.refine(OBS)[0].logprobs != tuned.refine(OBS)[0].logprobs


def test_adapter_loads_in_the_sidecar_and_changes_the_output(runs, warm_policy_dir):
    from promptloop.server import Settings

    _, full, _ = runs
    settings = Settings(policy=str(warm_policy_dir), backend="transformers", adapters={"grpo": str(full)},
                        max_new_tokens=24, device="cpu")
    base, tuned = _sidecar_logprobs(settings)
    assert base and tuned and base != tuned


def _sidecar_logprobs(settings) -> tuple[list[float], list[float]]:
    from fastapi.testclient import TestClient

    from promptloop.server import create_app

    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 600
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        body = {"prompt": OBS[0].original_prompt, "step": 1, "num_steps": 4, "sampling": {"return_logprobs": True}}
        base = client.post("/refine", json={**body, "use_base_model": True})
        tuned = client.post("/refine", json={**body, "adapter": "grpo"})
        assert base.status_code == tuned.status_code == 200, (base.text, tuned.text)
        return base.json()["refinements"][0]["logprobs"], tuned.json()["refinements"][0]["logprobs"]


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_adapter_loads_in_vllm_and_changes_the_output(runs, warm_policy_dir):
    from promptloop.policies.vllm import VLLMPolicy

    _, full, _ = runs
    policy = VLLMPolicy(warm_policy_dir, adapters={"grpo": full}, sampling=SamplingConfig(max_new_tokens=24,
                        return_logprobs=True), dtype="float32", enforce_eager=True, max_model_len=2048,
                        kv_cache_memory_bytes=256 * 2**20)
    try:
        conv = [policy.messages_for(OBS[0])]
        base = policy.generate(conv, adapter=None)[0]
        tuned = policy.generate(conv, adapter="grpo")[0]
    finally:
        policy.shutdown()
    assert base.logprobs != tuned.logprobs
