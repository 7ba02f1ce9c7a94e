"""The in-process transformers policy on the tiny Qwen2-VL, loaded from a saved directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_kwargs
from PIL import Image

from promptloop import Observation, PromptLoopHook, load_policy
from promptloop.policies import SamplingConfig, TransformersPolicy
from promptloop.policies.base import Generation, GenerativePolicy
from promptloop.policies.messages import build_messages


def _obs(i: int = 0, preview=True) -> Observation:
    image = Image.new("RGB", (64, 64), (30 * i, 100, 200)) if preview else None
    return Observation("a red fox", "a red fox, snow", step=4, num_steps=20, timestep=700.0,
                       preview=image, history=["a red fox"], sample_index=i)


def test_messages_follow_the_qwen_vl_convention():
    messages = build_messages(_obs())
    assert [m["role"] for m in messages] == ["system", "user"]
    image, text = messages[1]["content"]
    assert image["type"] == "image" and isinstance(image["image"], Image.Image)
    assert text["type"] == "text"
    for needle in ("Original prompt: a red fox", "Current prompt: a red fox, snow", "step 5 of 20",
                   "Earlier prompts: a red fox"):
        assert needle in text["text"]
    assert [p["type"] for p in build_messages(_obs(preview=False))[1]["content"]] == ["text"]


def test_loads_from_a_saved_directory_and_refines_a_batch(tiny_policy_dir):
    policy = load_policy(tiny_policy_dir, sampling=SamplingConfig(max_new_tokens=8, return_logprobs=True), device="cpu")
    assert isinstance(policy, TransformersPolicy)
    observations = [_obs(0), _obs(1), _obs(2, preview=False)]
    refinements = policy.refine(observations)
    assert len(refinements) == 3
    for obs, ref in zip(observations, refinements):
        assert ref.raw_text is not None
        assert 0 < len(ref.token_ids) <= 8 and len(ref.logprobs) == len(ref.token_ids)
        assert all(lp <= 0.0 for lp in ref.logprobs)
        assert ref.text == (obs.current_prompt if ref.fallback else ref.text)


def test_greedy_is_deterministic_and_batching_does_not_change_answers(tiny_policy):
    a = tiny_policy.refine([_obs(0), _obs(1)])
    b = tiny_policy.refine([_obs(0), _obs(1)])
    single = tiny_policy.refine([_obs(1)])
    assert [r.raw_text for r in a] == [r.raw_text for r in b]
    assert a[1].raw_text == single[0].raw_text


def test_logprobs_match_a_forward_pass(tiny_policy_dir):
    policy = TransformersPolicy.from_pretrained(tiny_policy_dir, device="cpu",
                                                sampling=SamplingConfig(max_new_tokens=6, return_logprobs=True))
    ref = policy.refine([_obs(0, preview=False)])[0]
    conv = policy.messages_for(_obs(0, preview=False))
    prompt = policy.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    ids = policy.processor(text=[prompt], return_tensors="pt")["input_ids"]
    full = torch.cat([ids, torch.tensor([ref.token_ids])], dim=1)
    with torch.no_grad():
        logits = policy.model(input_ids=full).logits[0, ids.shape[1] - 1:-1]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ref.token_ids)[:, None]).squeeze(-1)
    assert np.allclose(expected.numpy(), np.array(ref.logprobs), atol=1e-4)


def test_sampling_with_a_seed_is_reproducible_and_leaves_global_rng_alone(tiny_policy_dir):
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=7)
    policy = TransformersPolicy.from_pretrained(tiny_policy_dir, device="cpu", sampling=sampling)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = policy.refine([_obs(0)])[0].raw_text
    after = torch.rand(1)
    assert torch.equal(before, after), "the policy must not consume the caller's RNG"
    assert policy.refine([_obs(0)])[0].raw_text == first


def test_lora_adapter_loads_through_the_public_path(tiny_policy_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_policy_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    base = TransformersPolicy.from_pretrained(tiny_policy_dir, device="cpu", sampling=SamplingConfig(max_new_tokens=8))
    tuned = TransformersPolicy.from_pretrained(tiny_policy_dir, adapter=tmp_path / "adapter", device="cpu",
                                               sampling=SamplingConfig(max_new_tokens=8))
    assert type(tuned.model).__name__ == "PeftModel"
    obs = [_obs(0), _obs(1)]
    assert [r.token_ids for r in base.refine(obs)] != [r.token_ids for r in tuned.refine(obs)]


class _ScriptedBackend(GenerativePolicy):
    """A GenerativePolicy whose "model" replays fixed generations (tests the shared base logic)."""

    def __init__(self, generations):
        super().__init__()
        self.generations = generations

    def generate(self, conversations):
        return self.generations[: len(conversations)]


@pytest.mark.parametrize(
    "generation, expected_text, fallback",
    [
        (Generation("a red fox, golden hour"), "a red fox, golden hour", None),
        (Generation(""), "a red fox, snow", "empty"),
        (Generation("a red fox, golden", finished=False), "a red fox, snow", "truncated"),
        (Generation("\x00\x01\x02"), "a red fox, snow", "unparsable"),
    ],
)
def test_generative_base_turns_bad_generations_into_fallbacks(generation, expected_text, fallback):
    (ref,) = _ScriptedBackend([generation]).refine([_obs()])
    assert ref.text == expected_text
    assert (ref.fallback.value if ref.fallback else None) == fallback


def test_backbone_and_policy_load_from_saved_directories(tiny_policy_dir, tmp_path):
    """The whole loop through the public loading code, as with real checkpoints."""
    from promptloop.backbones import load_pipeline
    from promptloop.testing import save_tiny_pipeline

    pipe = load_pipeline(save_tiny_pipeline("sd", tmp_path / "sd"), device="cpu", dtype="float32")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    policy = load_policy(str(tiny_policy_dir), device="cpu", sampling=SamplingConfig(max_new_tokens=8))
    hook = PromptLoopHook(policy, schedule=[1, 2])
    images = pipe(["a red fox", "a blue car"], callback_on_step_end=hook, **run_kwargs("sd", steps=4)).images
    assert images.shape == (2, 64, 64, 3)
    assert len(hook.trace.entries) == 4
    assert all(e.raw_text is not None and e.preview is not None for e in hook.trace.entries)
