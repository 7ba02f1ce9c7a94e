"""ShapesWorld rewards: the exact per-attribute reward and the held-out fidelity metric.

``shapes`` scores each image against its (user) prompt of the ShapesWorld grammar by image
analysis alone (see :mod:`promptloop.worlds.shapes.reward`); ``attribute`` picks one of
``color``, ``shape``, ``count``, ``size``, ``position`` or the ``mean`` (default). A prompt outside
the grammar scores 0. ``shapes_fidelity`` is the held-out metric (outline fidelity and no
confetti), for watching reward hacking: do not train on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from promptloop.rewards.registry import Metadata, Reward, register_reward


@register_reward("shapes")
def shapes_reward(attribute: str = "mean") -> Reward:
    from promptloop.worlds.shapes.reward import ATTRIBUTES, shapes_scores

    if attribute not in ATTRIBUTES + ("mean",):
        raise ValueError(f"unknown ShapesWorld attribute {attribute!r}; choose from {ATTRIBUTES + ('mean',)}")

    def score(images: Sequence[Image.Image], prompts: Sequence[str], metadata: Metadata = None) -> list[float]:
        return shapes_scores(images, prompts, attribute=attribute)

    return score


@register_reward("shapes_fidelity")
def shapes_fidelity_reward() -> Reward:
    from promptloop.worlds.shapes.reward import fidelity

    def score(images: Sequence[Image.Image], prompts: Sequence[str], metadata: Metadata = None) -> list[float]:
        return [fidelity(image) for image in images]

    return score
