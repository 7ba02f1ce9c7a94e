"""Rewards: one registry for every trainer and ``promptloop eval``.

>>> from promptloop.rewards import load_reward
>>> reward = load_reward("jpeg_compressibility")          # or "jpeg_compressibility:1.0,clip:0.5"
>>> scores = reward(images, prompts)                         # one float per image

Register your own with :func:`register_reward`. This package never imports ``training``.
"""

from promptloop.rewards.registry import (
    CombinedReward,
    Reward,
    available_rewards,
    get_reward,
    load_reward,
    parse_reward_spec,
    register_reward,
)

__all__ = [
    "CombinedReward",
    "Reward",
    "available_rewards",
    "get_reward",
    "load_reward",
    "parse_reward_spec",
    "register_reward",
]
