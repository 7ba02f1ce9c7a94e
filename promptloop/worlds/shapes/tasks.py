"""What the ShapesWorld policy start learns, and how it is measured.

Two supervised tasks, shown through the chat messages the loop sends
(:func:`promptloop.policies.messages.build_messages`, same system prompt):

(a) **describe**: a preview of a scene -> its ``full`` caption (grounds the vision tower);
(b) **restate**: (user prompt, preview of an imperfect generation of it) -> a ``full``-style
    prompt of the intended scene naming the shapes in the user's order (:func:`in_prompt_order`). The imperfect generation is a render of the scene with one corruption
    (wrong colour, wrong shape, a missing or an extra shape, a moved shape, or none), blurred like a
    preview. The target keeps what the preview shows where it already satisfies the user's prompt
    (a moved shape stays where it is when the prompt does not place it) and repairs the rest.

:func:`evaluate_policy` reports (a) the held-out naming accuracy per attribute (the exact reward
of the caption against the render it describes) and (b) the rate of valid restatements (parsed,
no fallback) and of faithful ones (the restated scene satisfies the user's prompt exactly).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from PIL import Image, ImageFilter

from promptloop.policies.messages import SYSTEM_PROMPT, Message
from promptloop.refinement import Observation
from promptloop.worlds.shapes.evaluation import HELDOUT_SEED_BASE, USER_STYLES
from promptloop.worlds.shapes.grammar import ParseError, Spec, caption, explicit_caption, parse_prompt
from promptloop.worlds.shapes.render import render_scene
from promptloop.worlds.shapes.reward import ATTRIBUTES, score_image
from promptloop.worlds.shapes.scene import CELLS, COLORS, KINDS, SIZES, Scene, Shape, sample_scene

PREVIEW_SIZE = 112  # 8×8 patches of 14 px, merged 2×2: 16 image tokens
DESCRIBE_TEXT = "Describe the image as one explicit prompt."
CORRUPTIONS: tuple[str, ...] = ("none", "color", "kind", "missing", "extra", "moved")
#: Policy-training scenes are drawn from seeds from here on (the backbones' and held-out ranges differ).
POLICY_SEED_BASE = 500_000_000
#: Held-out examples per task that the tests re-measure the shipped policy on.
POLICY_TEST_N = 12


def preview_of(scene: Scene, rng: random.Random, size: int = PREVIEW_SIZE) -> Image.Image:
    """A render of ``scene`` blurred by a random amount and resized like a loop preview."""
    image = render_scene(scene).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    return image.resize((size, size), Image.Resampling.BILINEAR)


def describe_messages(image: Image.Image, *, system_prompt: str = SYSTEM_PROMPT) -> list[Message]:
    """Messages of task (a)."""
    return [{"role": "system", "content": [{"type": "text", "text": system_prompt}]},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": DESCRIBE_TEXT}]}]


def corrupt(scene: Scene, kind: str, rng: random.Random) -> Scene:
    """``scene`` with one corruption of ``kind`` (see :data:`CORRUPTIONS`)."""
    shapes = list(scene.shapes)
    free = [c for c in CELLS if c not in {s.cell for s in shapes}]
    i = rng.randrange(len(shapes))
    if kind == "color":
        shapes[i] = replace(shapes[i], color=rng.choice([c for c in COLORS if c != shapes[i].color]))
    elif kind == "kind":
        shapes[i] = replace(shapes[i], kind=rng.choice([k for k in KINDS if k != shapes[i].kind]))
    elif kind == "missing" and len(shapes) > 1:
        shapes.pop(i)
    elif kind == "extra" and free:
        shapes.append(Shape(rng.choice(list(COLORS)), rng.choice(KINDS), rng.choice(SIZES), rng.choice(free)))
    elif kind == "moved" and free:
        shapes[i] = replace(shapes[i], cell=rng.choice(free))
    return Scene(tuple(shapes), seed=scene.seed)


def satisfies(scene: Scene, prompt: str | Spec) -> bool:
    """True when the render of ``scene`` scores 1 on every attribute of ``prompt``."""
    return score_image(render_scene(scene), prompt)["mean"] == 1.0


def restate_example(seed: int, rng: random.Random | None = None) -> tuple[Observation, str, Scene]:
    """One task-(b) example: the observation, the target prompt and the intended scene."""
    rng = rng or random.Random(seed)
    intended = sample_scene(seed)
    user = caption(intended, rng.choice(USER_STYLES))
    shown = corrupt(intended, rng.choice(CORRUPTIONS), rng)
    target_scene = shown if satisfies(shown, user) else intended
    target = explicit_caption(in_prompt_order(target_scene, parse_prompt(user)))
    num_steps = rng.choice((10, 20, 25))
    step = rng.randrange(num_steps // 5, (4 * num_steps) // 5)
    current, history = user, []
    if rng.random() < 0.3:  # an earlier refinement described what was then shown
        current, history = caption(shown, "full"), [user]
    obs = Observation(user, current, step, num_steps, preview=preview_of(shown, rng), history=history)
    return obs, target, intended


def in_prompt_order(scene: Scene, spec: Spec) -> list[Shape]:
    """The scene's shapes in the order the prompt names them (shapes it does not name last), so
    that an explicit restatement follows the user's wording."""
    rest, ordered = list(scene.shapes), []
    for m in spec.mentions:
        pick = next((s for s in rest if (s.color, s.kind) == (m.color, m.kind)
                     and m.size in (None, s.size) and m.cell in (None, s.cell)), None)
        pick = pick or next((s for s in rest if (s.color, s.kind) == (m.color, m.kind)), None)
        if pick is not None:
            rest.remove(pick)
            ordered.append(pick)
    return ordered + rest


def describe_example(seed: int, rng: random.Random | None = None) -> tuple[Image.Image, str, Scene]:
    """One task-(a) example: the preview, the target caption and the scene."""
    rng = rng or random.Random(seed)
    scene = sample_scene(seed)
    return preview_of(scene, rng), caption(scene, "full"), scene


def scene_of(spec: Spec) -> Scene | None:
    """The scene a fully explicit prompt describes (every shape with size and cell), else None."""
    if any(m.size is None or m.cell is None for m in spec.mentions) or not spec.mentions:
        return None
    try:
        return Scene(tuple(Shape(m.color, m.kind, m.size, m.cell) for m in spec.mentions), seed=0)
    except ValueError:
        return None


def evaluate_policy(policy, n: int = 48, *, offset: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Held-out figures of a :class:`~promptloop.policies.base.GenerativePolicy` on ShapesWorld.

    ``describe_<attribute>``: mean exact reward of its caption against the render it describes,
    per attribute (``describe_valid``: share of captions that parse); ``restate_valid``: share of
    restatements accepted by the loop (no fallback) and in the grammar; ``restate_faithful``: share
    whose scene satisfies the user's prompt exactly; ``restate_explicit``: share that name every
    shape's size and position.
    """
    sums: dict[str, float] = {f"describe_{a}": 0.0 for a in ATTRIBUTES}
    counts: dict[str, int] = dict.fromkeys(sums, 0)
    valid_desc = 0
    examples = [describe_example(HELDOUT_SEED_BASE + offset + i) for i in range(n)]
    for start in range(0, n, batch_size):
        chunk = examples[start:start + batch_size]
        gens = policy.generate([describe_messages(image) for image, _, _ in chunk])
        for (image, _, scene), gen in zip(chunk, gens):
            try:
                scores = score_image(render_scene(scene), gen.text.strip())
            except ParseError:
                scores = {a: 0.0 for a in ATTRIBUTES}
            else:
                valid_desc += 1
            for a in ATTRIBUTES:
                if scores.get(a) is not None:
                    sums[f"describe_{a}"] += scores[a]
                    counts[f"describe_{a}"] += 1
    out = {k: round(sums[k] / counts[k], 4) for k in sums if counts[k]}
    out["describe_valid"] = round(valid_desc / n, 4)
    valid = faithful = explicit = 0
    restates = [restate_example(HELDOUT_SEED_BASE + offset + 10_000 + i) for i in range(n)]
    for start in range(0, n, batch_size):
        chunk = restates[start:start + batch_size]
        for (obs, _, _), ref in zip(chunk, policy.refine([o for o, _, _ in chunk])):
            if not ref.applied:
                continue
            try:
                spec = parse_prompt(ref.text)
            except ParseError:
                continue
            valid += 1
            scene = scene_of(spec)
            explicit += scene is not None
            faithful += scene is not None and satisfies(scene, obs.original_prompt)
    out.update(restate_valid=round(valid / n, 4), restate_faithful=round(faithful / n, 4),
               restate_explicit=round(explicit / n, 4), n=n)
    return out


def training_texts(n: int = 400) -> list[str]:
    """Captions in every style, for the policy tokenizer's BPE corpus."""
    from promptloop.worlds.shapes.grammar import STYLES

    return [caption(sample_scene(POLICY_SEED_BASE - 1 - i), STYLES[i % len(STYLES)]) for i in range(n)]


def mixed_batch(seeds: Sequence[int], rng: random.Random, describe_share: float = 0.4
                ) -> tuple[list[list[Message]], list[str]]:
    """Conversations and targets for a mixed (a)/(b) batch (``describe_share`` of (a))."""
    from promptloop.policies.messages import build_messages

    conversations, targets = [], []
    for seed in seeds:
        if rng.random() < describe_share:
            image, target, _ = describe_example(seed, rng)
            conversations.append(describe_messages(image))
        else:
            obs, target, _ = restate_example(seed, rng)
            conversations.append(build_messages(obs))
        targets.append(target)
    return conversations, targets
