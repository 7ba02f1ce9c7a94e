"""Rewards: one registry for every trainer and ``promptloop eval``.

>>> from promptloop.rewards import load_reward
>>> reward = load_reward("jpeg_compressibility")          # or "jpeg_compressibility:1.0,clip:0.5"
>>> scores = reward(images, prompts)                         # one float per image

Register your own with :func:`register_reward` (or from another package, through the
``promptloop.rewards`` entry-point group). This package names its built-in reward modules; they
are imported, and register themselves, when a reward is first listed or built; the registry itself
imports none of them. This package never imports ``training``.
"""

from promptloop.rewards import registry as _registry
from promptloop.rewards.registry import (
    CombinedReward,
    Reward,
    available_rewards,
    get_reward,
    load_reward,
    parse_reward_spec,
    register_reward,
    register_reward_module,
    reward_factory,
)

# The built-ins: each module registers its rewards when first needed (weights load only when built).
for _module in ("aesthetic", "clip", "hps", "imagereward", "jpeg", "quality", "shapes"):
    _registry.register_reward_module(f"promptloop.rewards.{_module}")
del _module

__all__ = [
    "CombinedReward",
    "Reward",
    "available_rewards",
    "get_reward",
    "load_reward",
    "parse_reward_spec",
    "register_reward",
    "register_reward_module",
    "reward_factory",
]
