"""Rewards: one registry for every trainer and ``promptloop eval``.

>>> from promptloop.rewards import load_reward
>>> reward = load_reward("jpeg_compressibility")          # or "jpeg_compressibility:1.0,clip:0.5"
>>> scores = reward(images, prompts)                         # one float per image

Register your own with :func:`register_reward` (or from another package, through the
``promptloop.rewards`` entry-point group). The built-in rewards register themselves when this
package is imported; the registry itself imports none of them. This package never imports
``training``.
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

# The built-ins: each module registers its rewards on import (weights load only when built).
from promptloop.rewards import aesthetic, clip, hps, imagereward, jpeg, quality, shapes  # noqa: E402, F401, I001

__all__ = [
    "CombinedReward",
    "Reward",
    "available_rewards",
    "get_reward",
    "load_reward",
    "parse_reward_spec",
    "register_reward",
]
