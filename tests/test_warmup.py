"""The warm-started tiny policy writes valid refinements (the random one never does)."""

from __future__ import annotations

import random

import pytest
import torch

from promptloop.policies import SamplingConfig, TransformersPolicy
from promptloop.refinement import Observation
from promptloop.testing import TINY_PROMPTS
from promptloop.testing.policy import build_tiny_qwen2vl
from promptloop.testing.warmup import (
    END_TOKEN,
    STYLE_WORDS,
    build_batch,
    loop_observation,
    next_style_word,
    random_observation,
    random_preview,
    save_warm_tiny_qwen2vl,
    warm_start,
    warm_target,
)
from promptloop.training.sft import answer_loss


def _loop_observations(refinements=(0, 1, 2), seed: int = 123) -> list[Observation]:
    """What the loop shows the policy: every tiny prompt after 0, 1 and 2 earlier refinements,
    each with a preview."""
    rng = random.Random(seed)
    return [
        loop_observation(prompt, k, step=2 + 3 * k, num_steps=10, preview=random_preview(rng))
        for k in refinements
        for prompt in TINY_PROMPTS
    ]


@pytest.fixture(scope="module")
def warm():
    model, processor = build_tiny_qwen2vl(seed=0)
    stats = warm_start(model, processor)
    return model, processor, stats


def test_targets_append_the_first_missing_style_word():
    assert next_style_word("a red fox") == STYLE_WORDS[0]
    assert next_style_word(f"a red fox, {STYLE_WORDS[0]}") == STYLE_WORDS[1]
    assert next_style_word(", ".join(("a red fox",) + STYLE_WORDS)) is None
    obs = loop_observation("a red fox in the snow", 2)
    assert obs.current_prompt == f"a red fox in the snow, {STYLE_WORDS[0]}, {STYLE_WORDS[1]}"
    assert obs.history == ["a red fox in the snow", f"a red fox in the snow, {STYLE_WORDS[0]}"]
    assert warm_target(obs) == f"{obs.current_prompt}, {STYLE_WORDS[2]}"
    # a style word already in the original prompt is skipped
    watercolor = "a watercolor painting of a quiet mountain lake"
    chain = [w for w in STYLE_WORDS if w != "watercolor"]
    assert loop_observation(watercolor, len(STYLE_WORDS)).current_prompt == ", ".join([watercolor, *chain])


def test_training_data_is_deterministic_and_varied():
    rng1, rng2 = random.Random(3), random.Random(3)
    one = [random_observation(rng1) for _ in range(40)]
    two = [random_observation(rng2) for _ in range(40)]
    assert [o.current_prompt for o in one] == [o.current_prompt for o in two]
    assert [None if o.preview is None else o.preview.tobytes() for o in one] == [
        None if o.preview is None else o.preview.tobytes() for o in two
    ]
    assert any(o.preview is None for o in one) and any(o.preview is not None for o in one)
    assert any(o.current_prompt == o.original_prompt for o in one)
    assert any(o.current_prompt != o.original_prompt for o in one)
    for obs in one:
        assert obs.original_prompt in TINY_PROMPTS
        assert obs.current_prompt.startswith(obs.original_prompt)
        assert 0 <= obs.step < obs.num_steps
        assert len(obs.history) == obs.current_prompt.count(", ") - obs.original_prompt.count(", ")


def test_labels_cover_exactly_the_answer_and_end_token():
    model, processor = build_tiny_qwen2vl(seed=1)
    observations = [random_observation(random.Random(i), preview=i % 2 == 0) for i in range(4)]
    inputs, spans = build_batch(processor, observations)
    assert inputs["pixel_values"] is not None and inputs["image_grid_thw"].shape[0] == 2
    tokenizer = processor.tokenizer
    for row, (obs, (start, n)) in enumerate(zip(observations, spans)):
        length = int(inputs["attention_mask"][row].sum())
        assert start + n == length  # right padding: the answer ends the row's real tokens
        assert tokenizer.decode(inputs["input_ids"][row, start:length]) == warm_target(obs) + END_TOKEN
        assert tokenizer.decode(inputs["input_ids"][row, :start]).endswith("<|im_start|>assistant\n")

    # The loss taken with the system prompt run once and shared equals the plain forward's
    # loss, and the model's own loss with labels on the answer tokens only.
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, (start, n) in enumerate(spans):
        labels[row, start:start + n] = inputs["input_ids"][row, start:start + n]
    with torch.no_grad():
        reference = model(**inputs, labels=labels).loss
        plain = answer_loss(model, inputs, spans, share_prefix=False)
        shared = answer_loss(model, inputs, spans)
    torch.testing.assert_close(plain, reference)
    torch.testing.assert_close(shared, reference)


def test_the_random_policy_always_falls_back():
    model, processor = build_tiny_qwen2vl(seed=0)
    policy = TransformersPolicy(model, processor, SamplingConfig(max_new_tokens=40))
    refinements = policy.refine(_loop_observations(refinements=(0,))[:4])
    assert all(not r.applied for r in refinements)


def test_warm_start_trains_and_leaves_eval_mode(warm):
    model, _processor, stats = warm
    assert not model.training
    assert set(stats) == {"loss_first", "loss_last", "seconds"}
    assert stats["loss_first"] > 5.0  # ~log(vocab) before training
    assert stats["loss_last"] < 0.3
    assert 0 < stats["seconds"] < 300


def test_warm_policy_writes_valid_refinements(warm):
    model, processor, _stats = warm
    policy = TransformersPolicy(model, processor, SamplingConfig(max_new_tokens=40))
    observations = _loop_observations()
    refinements = policy.refine(observations)
    good = [
        r.applied and r.text.startswith(obs.current_prompt) and r.text != obs.current_prompt
        for obs, r in zip(observations, refinements)
    ]
    outputs = [(o.current_prompt, r.text, r.fallback) for o, r in zip(observations, refinements)]
    assert sum(good) >= 0.8 * len(observations), outputs
    # what it adds is style phrases, usually exactly the one it was taught to add
    for obs, r, ok in zip(observations, refinements, good):
        if ok:
            added = r.text[len(obs.current_prompt):]
            assert added.startswith(", ")
            assert all(part in STYLE_WORDS for part in added[2:].split(", ")), added
    exact = sum(r.text == warm_target(obs) for obs, r in zip(observations, refinements))
    assert exact >= 0.7 * len(observations)
    # also without a preview
    plain = [loop_observation(prompt, 1, step=5, num_steps=10) for prompt in TINY_PROMPTS]
    ok = sum(r.applied and r.text.startswith(o.current_prompt) for o, r in zip(plain, policy.refine(plain)))
    assert ok >= 0.8 * len(plain)


def test_saved_warm_policy_round_trips(tmp_path):
    # A short warm start is enough to check that saving, loading and training are exact.
    path = save_warm_tiny_qwen2vl(tmp_path / "warm", seed=3, steps=3)
    assert (path / "config.json").exists() and (path / "tokenizer_config.json").exists()
    model, processor = build_tiny_qwen2vl(seed=3)
    warm_start(model, processor, steps=3, seed=3)
    sampling = SamplingConfig(max_new_tokens=12)
    loaded = TransformersPolicy.from_pretrained(path, device="cpu", dtype="float32", sampling=sampling)
    in_memory = TransformersPolicy(model, processor, sampling)
    expected = model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    observations = _loop_observations(refinements=(0, 1))[::8]
    got = loaded.refine(observations)
    want = in_memory.refine(observations)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.text for r in got] == [r.text for r in want]


def test_saved_after_full_warm_start_matches(warm, tmp_path):
    # The fully trained model saved and loaded back refines exactly like the in-memory one.
    model, processor, _stats = warm
    model.save_pretrained(tmp_path / "warm")
    processor.save_pretrained(tmp_path / "warm")
    sampling = SamplingConfig(max_new_tokens=40)
    loaded = TransformersPolicy.from_pretrained(
        tmp_path / "warm", device="cpu", dtype="float32", sampling=sampling
    )
    observations = _loop_observations(refinements=(1,))[:6]
    got = loaded.refine(observations)
    want = TransformersPolicy(model, processor, sampling).refine(observations)
    assert [r.text for r in got] == [r.text for r in want]
    assert sum(r.applied for r in got) >= 4
