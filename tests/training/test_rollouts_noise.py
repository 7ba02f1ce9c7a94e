"""GRPO rollouts with ``share_noise``: the G rollouts of a prompt start from the same latents, so
with an identical rewrite they give identical images; without it, each draws its own noise."""

from __future__ import annotations

import numpy as np

from promptloop.policies import StaticPolicy
from promptloop.rewards import load_reward
from promptloop.training.rollouts import rollout


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_shared_noise_makes_a_groups_rollouts_differ_only_by_the_policy(tiny_pipes):
    pipe = tiny_pipes["sd"]
    same = StaticPolicy(lambda obs: obs.current_prompt + ", watercolor")
    prompts = ["a red fox", "a blue boat"]
    kwargs = dict(num_generations=3, schedule="evenly:1", num_inference_steps=3, height=64, width=64)
    reward = load_reward("jpeg_compressibility")
    shared = rollout(pipe, same, prompts, reward, seed=5, share_noise=True, **kwargs)
    for group in (shared.images[:3], shared.images[3:]):
        assert all(np.array_equal(_pixels(group[0]), _pixels(x)) for x in group[1:])
    assert not np.array_equal(_pixels(shared.images[0]), _pixels(shared.images[3]))  # groups differ
    assert shared.rewards[0] == shared.rewards[1] == shared.rewards[2]

    apart = rollout(pipe, same, prompts, reward, seed=5, **kwargs)
    assert not np.array_equal(_pixels(apart.images[0]), _pixels(apart.images[1]))
    # deterministic from the seed
    again = rollout(pipe, same, prompts, reward, seed=5, share_noise=True, **kwargs)
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(shared.images, again.images))
