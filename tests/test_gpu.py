"""The same code paths on a CUDA GPU (half precision). Skipped on machines without CUDA; the CPU
suite covers these paths on the same tiny models."""

from __future__ import annotations

import pytest
import torch
from helpers import run_kwargs, suffix_policy
from test_hook import PROMPTS, reference_callback

from promptloop import PromptLoopHook
from promptloop.testing import FAMILIES, tiny_pipeline

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_pipes():
    return {f: tiny_pipeline(f).to("cuda", torch.float16) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_on_cuda_fp16_matches_hand_written_callback(cuda_pipes, family):
    pipe = cuda_pipes[family]
    callback, inputs = reference_callback(family, {1, 3}, PROMPTS, 2, ", oil painting")
    kwargs = run_kwargs(family, n=2)
    kwargs["output_type"] = "pt"
    expected = pipe(PROMPTS, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs, **kwargs).images
    hook = PromptLoopHook(suffix_policy(), schedule=[1, 3])
    got = pipe(PROMPTS, callback_on_step_end=hook, **{**kwargs, "generator": torch.Generator().manual_seed(0)}).images
    assert got.device.type == "cuda" and torch.isfinite(got).all()
    assert torch.equal(got, expected)
    assert all(e.preview is not None for e in hook.trace.entries)


def test_async_forced_arrival_equals_sync_on_cuda(cuda_pipes):
    pipe = cuda_pipes["sdxl"]
    sync = PromptLoopHook(suffix_policy(), schedule=[3], mode="sync")
    expected = pipe(PROMPTS, callback_on_step_end=sync, **{**run_kwargs("sdxl"), "output_type": "pt"}).images
    hook = PromptLoopHook(suffix_policy(), schedule=[1], mode="async", async_delay=2)
    got = pipe(PROMPTS, callback_on_step_end=hook, **{**run_kwargs("sdxl"), "output_type": "pt"}).images
    assert torch.equal(got, expected)


def test_transformers_policy_on_cuda(tiny_policy_dir, cuda_pipes):
    from promptloop.policies import SamplingConfig, TransformersPolicy

    policy = TransformersPolicy.from_pretrained(tiny_policy_dir, device="cuda",
                                                sampling=SamplingConfig(max_new_tokens=8, return_logprobs=True))
    assert policy.device.type == "cuda"
    hook = PromptLoopHook(policy, schedule=[1, 2])
    cuda_pipes["sd"](PROMPTS, callback_on_step_end=hook, **run_kwargs("sd", steps=4))
    assert len(hook.trace.entries) == 4
    assert all(e.token_ids and len(e.logprobs) == len(e.token_ids) for e in hook.trace.entries)
