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
    kwargs = {"num_generations": 3, "schedule": "evenly:1", "num_inference_steps": 3, "height": 64, "width": 64}
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


def test_a_shared_noise_group_shares_its_random_refinement_steps(warm_policy_dir, tiny_pipes):
    """Identical greedy policies in one group: the same latents *and* the same random refinement
    steps, so the group's images are identical and its reward spread is zero; groups still draw
    their own steps, and without ``share_noise`` each rollout draws its own."""
    from promptloop.policies import SamplingConfig, TransformersPolicy

    policy = TransformersPolicy.from_pretrained(warm_policy_dir, device="cpu")
    greedy = SamplingConfig(max_new_tokens=24, temperature=0.0, return_logprobs=True)
    prompts = ["a red fox", "a blue boat", "a green tree"]
    kwargs = {"num_generations": 4, "schedule": "random:2", "num_inference_steps": 8, "height": 64, "width": 64,
              "sampling": greedy, "preview_size": 56}
    reward = load_reward("jpeg_compressibility")
    shared = rollout(tiny_pipes["sd"], policy, prompts, reward, seed=3, share_noise=True, **kwargs)
    steps = shared.trace.meta["sample_steps"]
    groups = [steps[g * 4:(g + 1) * 4] for g in range(len(prompts))]
    assert all(group == [group[0]] * 4 for group in groups), steps
    assert len({tuple(group[0]) for group in groups}) > 1, steps  # each group draws its own steps
    for g in range(len(prompts)):
        images = shared.images[g * 4:(g + 1) * 4]
        assert all(np.array_equal(_pixels(images[0]), _pixels(x)) for x in images[1:]), f"group {g}"
        assert max(shared.rewards[g * 4:(g + 1) * 4]) - min(shared.rewards[g * 4:(g + 1) * 4]) == 0.0

    apart = rollout(tiny_pipes["sd"], policy, prompts, reward, seed=3, **kwargs)
    assert len({tuple(s) for s in apart.trace.meta["sample_steps"][:4]}) > 1  # the paper's setting
