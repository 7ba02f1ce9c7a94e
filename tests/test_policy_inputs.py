"""What every generative backend shows the model: one image preparation, one input bound, and
sampling settings that travel with each call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from promptloop.policies import SamplingConfig
from promptloop.policies.base import InputTooLongError
from promptloop.policies.messages import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FACTOR,
    MAX_ASPECT_RATIO,
    build_messages,
    prepare_conversation,
    prepare_image,
)
from promptloop.refinement import Observation


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (17, 9), (2000, 1500), (5, 5)])
def test_prepare_image_is_qwen_vl_utils_resize(size):
    from qwen_vl_utils import fetch_image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = fetch_image({"image": image, "max_pixels": DEFAULT_MAX_PIXELS})
    assert np.array_equal(np.asarray(prepare_image(image)), np.asarray(expected))


@pytest.mark.parametrize("size", [(1, 300), (300, 1), (3, 40000), (41, 8200)])
def test_extreme_aspect_ratios_are_padded_to_what_qwen_vl_accepts(size, tiny_policy):
    image = Image.new("RGB", size, (250, 10, 10))
    out = prepare_image(image)
    width, height = out.size
    assert width % IMAGE_FACTOR == 0 and height % IMAGE_FACTOR == 0
    assert max(width, height) / min(width, height) <= MAX_ASPECT_RATIO
    assert width * height <= DEFAULT_MAX_PIXELS
    pixels = np.asarray(out)
    rows, cols = np.nonzero((pixels == (250, 10, 10)).all(-1))
    assert abs((rows.min() + rows.max() + 1) / 2 - height / 2) <= 1  # the content, centred
    assert abs((cols.min() + cols.max() + 1) / 2 - width / 2) <= 1
    if max(size) / min(size) > MAX_ASPECT_RATIO:
        assert tuple(pixels[0, 0]) == (0, 0, 0)  # black padding
    # the model's own processor takes it (it rejects ratios above 200 itself; the tiny one's
    # smaller max_pixels may shrink it further)
    inputs = tiny_policy.processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[out])
    (_, grid_h, grid_w), = inputs["image_grid_thw"].tolist()
    assert (grid_h >= grid_w) == (height >= width)


def test_prepare_conversation_replaces_images_and_refuses_anything_but_pil():
    obs = Observation("a cat", "a cat", 1, 4, preview=Image.new("RGB", (1, 300), "blue"))
    conversation, images = prepare_conversation(build_messages(obs))
    assert [im.size for im in images] == [(28, 308)]
    assert conversation[1]["content"][0]["image"] is images[0]
    with pytest.raises(TypeError, match="PIL"):
        prepare_conversation([{"role": "user", "content": [{"type": "image", "image": "file:///etc/passwd"}]}])


def _obs(preview=True):
    return Observation("a red fox", "a red fox, snow", 2, 10,
                       preview=Image.new("RGB", (64, 64), (200, 60, 20)) if preview else None)


def test_the_input_bound_defaults_to_the_context_and_is_checked_before_generating(tiny_policy):
    context = tiny_policy.model.config.text_config.max_position_embeddings
    assert tiny_policy.context_length == context
    assert tiny_policy.input_token_limit() == context - tiny_policy.sampling.max_new_tokens
    assert tiny_policy.input_token_limit(SamplingConfig(max_new_tokens=100)) == context - 100
    calls = []
    original = tiny_policy.model.generate
    tiny_policy.model.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    tiny_policy.max_input_tokens = 40
    try:
        with pytest.raises(InputTooLongError) as err:
            tiny_policy.refine([_obs(preview=False), _obs()])
        assert err.value.limit == 40 and err.value.tokens > 40 and "limit 40" in str(err.value)
        with pytest.raises(InputTooLongError):
            tiny_policy.plan(["a red fox"], [1, 2], 4)
    finally:
        tiny_policy.max_input_tokens = None
        del tiny_policy.model.generate
    assert calls == []  # refused before model.generate ran
    assert len(tiny_policy.refine([_obs()])) == 1


def test_sampling_travels_with_the_call_and_async_matches_sync(tiny_policy):
    default = tiny_policy.sampling
    short = tiny_policy.refine([_obs()], sampling=SamplingConfig(max_new_tokens=2, return_logprobs=True))[0]
    assert tiny_policy.sampling is default and default.max_new_tokens == 12
    assert len(short.token_ids) <= 2 and len(short.logprobs) == len(short.token_ids)
    sync = tiny_policy.refine([_obs(), _obs(preview=False)])
    async_ = asyncio.run(tiny_policy.arefine([_obs(), _obs(preview=False)]))
    assert [r.raw_text for r in async_] == [r.raw_text for r in sync]
    plans = asyncio.run(tiny_policy.aplan(["a red fox"], [1, 2], 4))
    assert [r.raw_text for r in plans[0]] == [r.raw_text for r in tiny_policy.plan(["a red fox"], [1, 2], 4)[0]]


def test_log_probs_follow_the_calls_sampling_not_the_policys(tiny_policy):
    """A call sampled at temperature 2 on a greedy policy records log-probs at temperature 2, the
    ones ``score`` gives at that temperature."""
    import torch

    assert tiny_policy.sampling.greedy
    hot = SamplingConfig(max_new_tokens=6, temperature=2.0, seed=3, return_logprobs=True)
    (ref,) = tiny_policy.refine([_obs()], sampling=hot)
    conversation = tiny_policy.messages_for(_obs())
    with torch.no_grad():
        scored = tiny_policy.score([conversation], [ref.token_ids], temperature=2.0, entropies=False)
    torch.testing.assert_close(torch.tensor([ref.logprobs]), scored.logprobs, atol=1e-4, rtol=1e-4)
