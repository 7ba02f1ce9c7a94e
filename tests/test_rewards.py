"""The reward registry: registration, weighted specs, JPEG rewards."""

import numpy as np
import pytest
from PIL import Image

from promptloop.rewards import available_rewards, get_reward, load_reward, parse_reward_spec, register_reward


def _flat_and_noisy():
    flat = Image.new("RGB", (64, 64), (120, 30, 200))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return flat, noisy


def test_jpeg_rewards_order_simple_above_noisy():
    flat, noisy = _flat_and_noisy()
    comp = get_reward("jpeg_compressibility")([flat, noisy], ["a", "b"])
    incomp = get_reward("jpeg_incompressibility")([flat, noisy], ["a", "b"])
    assert comp[0] > comp[1]
    assert incomp[1] > incomp[0]
    assert comp == pytest.approx([-x for x in incomp])


def test_spec_parsing_and_weighted_combination():
    assert parse_reward_spec("jpeg_compressibility:1.0, jpeg_incompressibility:0.5") == {
        "jpeg_compressibility": 1.0, "jpeg_incompressibility": 0.5}
    assert parse_reward_spec("jpeg_compressibility") == {"jpeg_compressibility": 1.0}
    with pytest.raises(ValueError):
        parse_reward_spec("a:x")
    flat, noisy = _flat_and_noisy()
    combined = load_reward("jpeg_compressibility:2.0,jpeg_incompressibility:0.5")
    terms = combined.terms([flat, noisy], ["a", "b"])
    expected = [2.0 * c + 0.5 * i for c, i in zip(terms["jpeg_compressibility"], terms["jpeg_incompressibility"])]
    assert combined([flat, noisy], ["a", "b"]) == pytest.approx(expected)


def test_register_user_reward_with_options():
    @register_reward("test_prompt_length", overwrite=True)
    def prompt_length(scale: float = 1.0):
        return lambda images, prompts, metadata=None: [scale * len(p) for p in prompts]

    assert "test_prompt_length" in available_rewards()
    flat, _ = _flat_and_noisy()
    assert get_reward("test_prompt_length", scale=2.0)([flat], ["abc"]) == [6.0]
    assert load_reward("test_prompt_length:0.5", {"test_prompt_length": {"scale": 2.0}})([flat], ["abc"]) == [3.0]
    with pytest.raises(ValueError):
        register_reward("test_prompt_length")(lambda: None)
    with pytest.raises(KeyError, match="unknown reward"):
        get_reward("no_such_reward")
