"""Held-out prompts and the per-attribute evaluation of a backbone (with or without a policy)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image

from promptloop.worlds.shapes.grammar import caption
from promptloop.worlds.shapes.reward import ATTRIBUTES, fidelity, score_image
from promptloop.worlds.shapes.scene import Scene, sample_scene

#: Held-out scenes use seeds from here on; training never draws them.
HELDOUT_SEED_BASE = 900_000_000
#: Styles of the held-out *user* prompts: what a user would type (the policy makes them explicit).
USER_STYLES: tuple[str, ...] = ("terse", "counted", "placed", "relational")


def heldout_scenes(n: int, offset: int = 0) -> list[Scene]:
    """``n`` held-out scenes (deterministic)."""
    return [sample_scene(HELDOUT_SEED_BASE + offset + i) for i in range(n)]


def heldout_prompts(n: int, styles: Sequence[str] = USER_STYLES, offset: int = 0) -> list[tuple[Scene, str]]:
    """``n`` held-out (scene, prompt) pairs, the style cycling through ``styles``."""
    rng = random.Random(offset)
    out = []
    for i, scene in enumerate(heldout_scenes(n, offset)):
        style = styles[i % len(styles)] if len(styles) else rng.choice(USER_STYLES)
        out.append((scene, caption(scene, style)))
    return out


#: Scenes of the policy's RL training prompts are drawn from seeds from here on (disjoint from the
#: backbones' training scenes, the SFT scenes and the held-out ones).
RL_SEED_BASE = 700_000_000


def training_prompts(n: int = 256, styles: Sequence[str] = USER_STYLES) -> list[str]:
    """``n`` user prompts for RL training of the policy (never held out), styles cycling."""
    return [caption(sample_scene(RL_SEED_BASE + i), styles[i % len(styles)]) for i in range(n)]


def summarize(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """Mean of each attribute over the images whose prompt constrains it, the mean reward and
    the held-out fidelity metric."""
    sums: dict[str, list[float]] = {k: [] for k in ATTRIBUTES + ("mean",)}
    fid = []
    for image, prompt in zip(images, prompts, strict=True):
        for key, value in score_image(image, prompt).items():
            if value is not None:
                sums[key].append(value)
        fid.append(fidelity(image))
    out = {k: round(sum(v) / len(v), 4) for k, v in sums.items() if v}
    out["fidelity"] = round(sum(fid) / len(fid), 4)
    out["n"] = len(images)
    return out


#: Where every step-wise ShapesWorld evaluation refines (the experiment, the demo, shipped figures).
STEPWISE_SCHEDULE = "evenly:2"
#: The loop as every step-wise ShapesWorld evaluation runs it (sync mode, VAE previews of 112 px).
STEERING: dict = {"mode": "sync", "preview": "vae", "preview_size": 112}


def generate(pipe, prompts: Sequence[str], *, seed: int = 0, steps: int = 20, guidance: float = 4.0,
             batch_size: int = 16, policy=None, schedule: str = STEPWISE_SCHEDULE) -> list[Image.Image]:
    """Images of ``prompts`` from a ShapesWorld pipeline, steered by ``policy`` when given
    (:data:`STEERING`, refining at ``schedule``); image i uses noise seed ``image_seed(seed, i)``
    (:mod:`promptloop.rollout`: ``i`` for seed 0), in batches of ``batch_size``."""
    return generate_with_finals(pipe, prompts, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size,
                                policy=policy, schedule=schedule)[0]


def generate_with_finals(pipe, prompts: Sequence[str], *, seed: int = 0, steps: int = 20, guidance: float = 4.0,
                         batch_size: int = 16, policy=None,
                         schedule: str = STEPWISE_SCHEDULE) -> tuple[list[Image.Image], list[str]]:
    """:func:`generate`, with each image's final prompt (the last the policy wrote, or its own)."""
    from promptloop.rollout import image_seed, sample

    images: list[Image.Image] = []
    finals: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        out, trace = sample(pipe, chunk, [image_seed(seed, start + i) for i in range(len(chunk))], policy=policy,
                            schedule=schedule, num_inference_steps=steps, guidance_scale=guidance, height=64,
                            width=64, **STEERING)
        images += out
        finals += trace.final_prompts()
    return images, finals


def evaluate_backbone(pipe, n: int = 64, *, styles: Sequence[str] = USER_STYLES, seed: int = 0,
                      steps: int = 20, guidance: float = 4.0, policy=None,
                      schedule: str = STEPWISE_SCHEDULE) -> dict[str, float]:
    """Per-attribute exact reward of ``pipe`` on ``n`` held-out prompts (steered by ``policy`` when
    given, see :func:`generate`)."""
    pairs = heldout_prompts(n, styles)
    prompts = [p for _, p in pairs]
    images = generate(pipe, prompts, seed=seed, steps=steps, guidance=guidance, policy=policy, schedule=schedule)
    return summarize(images, prompts)


def evaluate_steered(pipe, policy, n: int = 64, *, schedule: str = STEPWISE_SCHEDULE, **kwargs) -> dict[str, float]:
    """Per-attribute exact reward of ``pipe`` steered by ``policy`` on the same ``n`` held-out
    prompts and noise as :func:`evaluate_backbone` (``kwargs``: its options)."""
    return evaluate_backbone(pipe, n, policy=policy, schedule=schedule, **kwargs)


#: The small fixed set the tests re-measure shipped artefacts on (recorded in training_info.json).
TEST_SET: dict = {"n": 16, "seed": 0, "steps": 20, "guidance": 4.0}
#: The fixed held-out set the tests re-measure a shipped *policy* on (steered against alone): the
#: experiment's 32 held-out prompts with noise seed 0; twice TEST_SET, as a margin is noisier.
POLICY_TEST_SET: dict = {"n": 32, "seed": 0, "steps": 20, "guidance": 4.0}
#: The larger held-out set the docs report.
REPORT_SET: dict = {"n": 128, "seed": 0, "steps": 20, "guidance": 4.0}


def attribute_metrics(attributes: Sequence[str] = ATTRIBUTES) -> dict[str, object]:
    """Per-attribute exact scores as ``promptloop.evaluation`` metrics: ``{"shapes_color": fn, ...}``,
    each ``fn(images, prompts)`` giving the attribute's score per image, ``None`` where the prompt
    does not constrain it (left out of the means), 0 for prompts outside the grammar."""
    from promptloop.worlds.shapes.grammar import ParseError

    def metric(attribute: str):
        def score(images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float | None]:
            out: list[float | None] = []
            for image, prompt in zip(images, prompts, strict=True):
                try:
                    out.append(score_image(image, prompt)[attribute])
                except ParseError:
                    out.append(0.0)
            return out

        return score

    unknown = set(attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown ShapesWorld attributes {sorted(unknown)}; choose from {ATTRIBUTES}")
    return {f"shapes_{a}": metric(a) for a in attributes}
