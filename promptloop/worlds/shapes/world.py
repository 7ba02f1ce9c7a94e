"""ShapesWorld as a :class:`~promptloop.worlds.base.World`: what the CLI, ``promptloop eval``, the
prompt sets and the training scripts ask about it (``promptloop.worlds.get_world("shapes")``).

This module names the world's shipped assets (:data:`ASSETS`, inside the installed package);
everything else that needs a path asks :data:`WORLD`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptloop.worlds.base import World, package_assets
from promptloop.worlds.shapes.evaluation import STEPWISE_SCHEDULE

#: The shipped backbones, policy start and GRPO adapter (``promptloop/assets/shapesworld/``).
ASSETS = package_assets("promptloop", "assets", "shapesworld")
#: Shipped backbones: A and B trained on every phrasing ("mixed" captions), C and D on 95 %
#: descriptive ``full`` captions (docs/shapesworld.md), E on "phantom" captions that neglect
#: later-named shapes (docs/seeing.md).
BACKBONES: tuple[str, ...] = ("backbone-a", "backbone-b", "backbone-c", "backbone-d", "backbone-e")
#: Sampling settings the shipped backbones were evaluated with.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0
#: How many prompts each set holds when no count is given.
PROMPT_SET_SIZES = {"train": 256, "heldout": 64}


@dataclass(frozen=True, kw_only=True)
class ShapesWorld(World):
    """Coloured shapes on a 3x3 grid, a caption grammar, an exact reward (``shapes``) and a held-out
    fidelity metric (``shapes_fidelity``). Prompt sets: ``train`` (the policy's RL prompts),
    ``heldout`` (evaluation scenes never trained on) and ``demo`` (what a user would type)."""

    def prompts(self, prompt_set: str = "train", n: int | None = None) -> list[str]:
        from promptloop.worlds.shapes import evaluation

        if prompt_set == "demo":
            from promptloop.worlds.shapes.demo import DEMO_PROMPTS

            return list(DEMO_PROMPTS[:n])
        if prompt_set not in PROMPT_SET_SIZES:
            raise ValueError(f"{self.title} has no prompt set {prompt_set!r}; sets: {', '.join(self.prompt_sets)}")
        n = PROMPT_SET_SIZES[prompt_set] if n is None else n
        if prompt_set == "train":
            return evaluation.training_prompts(n)
        return [p for _, p in evaluation.heldout_prompts(n)]

    @property
    def demo_prompts(self) -> list[str]:
        return self.prompts("demo")

    def metrics(self) -> dict[str, Callable[[list[Any], list[str]], Sequence[float | None]]]:
        """The exact score of each attribute a prompt constrains: ``shapes_color``, ``shapes_count`` ..."""
        from promptloop.worlds.shapes.evaluation import attribute_metrics

        return attribute_metrics()  # type: ignore[return-value]

    def run_demo(self, out: Path, *, prompts: Sequence[str] | None = None, backbone: str | None = None,
                 adapter: str | None = None, steps: int | None = None, schedule: str | None = None,
                 mode: str = "sync", seed: int = 0, echo: Callable[[str], None] = print) -> dict:
        from promptloop.worlds.shapes.demo import run_demo

        return run_demo(out, prompts=prompts, backbone=backbone or self.default_backbone, adapter=adapter,
                        steps=steps or self.num_inference_steps, schedule=schedule or self.schedule,
                        mode=mode, seed=seed, echo=echo)


WORLD = ShapesWorld(
    name="shapes",
    title="ShapesWorld",
    docs="docs/shapesworld.md",
    assets=ASSETS,
    backbones=BACKBONES,
    policies=("policy-sft",),
    adapters=("policy-grpo",),
    # Trained on descriptive captions, so users' short prompts are where it is weak and the
    # policy's explicit restatements help (docs/shapesworld.md).
    default_backbone="backbone-c",
    default_policy="policy-sft",
    # GRPO-trained on backbone C; beats the SFT start on fresh held-out prompts (docs/training.md).
    default_adapter="policy-grpo",
    rewards=("shapes",),
    heldout_metrics=("shapes_fidelity",),
    prompt_sets=("train", "heldout", "demo"),
    num_inference_steps=DEFAULT_STEPS,
    guidance_scale=DEFAULT_GUIDANCE,
    height=64,
    width=64,
    schedule=STEPWISE_SCHEDULE,  # as the shipped policy was trained and evaluated
)
