"""The hand-written ShapesWorld controllers of issue 22 (mechanics; their headroom is a study:
benchmarks/study_seeing_headroom.py, docs/seeing.md)."""

from __future__ import annotations

import pytest

from promptloop.oneshot import oneshot_rewrite
from promptloop.refinement import Observation
from promptloop.worlds.shapes.controllers import OneShotRule, PreviewRule, candidate_rewrites, oneshot_rule
from promptloop.worlds.shapes.evaluation import training_prompts
from promptloop.worlds.shapes.grammar import (
    CAPTION_MIXES,
    STYLES,
    explicit_caption,
    parse_prompt,
    phantom_shapes,
    random_caption,
    swapped_shapes,
)
from promptloop.worlds.shapes.render import render_scene
from promptloop.worlds.shapes.reward import score_image
from promptloop.worlds.shapes.scene import Scene, Shape, sample_scene

SCENE = Scene((Shape("red", "circle", "large", (0, 0)), Shape("blue", "square", "large", (1, 1)),
               Shape("yellow", "triangle", "large", (2, 2))))
FULL = explicit_caption(SCENE.shapes)


def _without(scene: Scene, index: int) -> Scene:
    return Scene(tuple(s for i, s in enumerate(scene.shapes) if i != index))


def test_oneshot_rule_writes_explicit_grammar_prompts_that_satisfy_the_user():
    users = training_prompts(40)
    _, rewritten = oneshot_rewrite(OneShotRule(), users, 20)
    for user, text in zip(users, rewritten, strict=True):
        spec = parse_prompt(text)  # in the grammar
        assert all(m.size is not None and m.cell is not None for m in spec.mentions), text  # explicit
        assert score_image(render_scene(Scene(_shapes(spec)), jitter=False), user)["mean"] == 1.0, (user, text)
    # A and B follow the user's own phrasing best: their one-shot rule keeps it
    assert oneshot_rule("backbone-a").refine([Observation(users[0], users[0], -1, 20)])[0].text == users[0]


def _shapes(spec):
    return tuple(Shape(m.color, m.kind, m.size, m.cell) for m in spec.mentions)


@pytest.mark.parametrize("missing", [1, 2])
def test_preview_rule_names_the_shape_the_preview_lacks_first(missing):
    preview = render_scene(_without(SCENE, missing), jitter=False)
    obs = Observation(FULL, FULL, 5, 20, preview=preview)
    text = PreviewRule().refine([obs])[0].text
    spec = parse_prompt(text)
    assert _shapes(spec)[0] == SCENE.shapes[missing]
    assert sorted(_shapes(spec)) == sorted(SCENE.shapes)  # the same scene is asked for
    counted = PreviewRule(count=True).refine([obs])[0].text
    assert counted.startswith("three shapes: ") and parse_prompt(counted).total == 3


def test_preview_rule_keeps_the_prompt_when_the_preview_shows_everything():
    rule = PreviewRule()
    obs = Observation(FULL, FULL, 5, 20, preview=render_scene(SCENE, jitter=False))
    assert rule.refine([obs])[0].text == FULL
    assert rule.log[-1].unseen == [] and rule.log[-1].seen == 3
    # before sampling (no preview) it is the one-shot rule
    user = "a red circle and a blue square"
    assert rule.refine([Observation(user, user, -1, 20)])[0].text == OneShotRule().refine(
        [Observation(user, user, -1, 20)])[0].text


class _RenderedPreviews:
    """A preview decoder that shows a fixed render (the scene with a known shape missing)."""

    def __init__(self, image):
        self.image, self.calls = image, 0

    def decode(self, latents):
        self.calls += 1
        return [self.image] * latents.shape[0]


@pytest.fixture(scope="module")
def tiny_pipe():
    from promptloop.worlds.shapes.backbone import assemble_pipeline, build_components

    pipe = assemble_pipeline(build_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_both_rules_run_through_the_real_loop(tiny_pipe):
    import torch

    from promptloop.hook import PromptLoopHook

    user = "a red circle, a blue square and a yellow triangle"
    rule = PreviewRule()
    trace, first = oneshot_rewrite(rule, [user, user], 4)
    assert [e.step for e in trace.entries] == [-1, -1] and first == [OneShotRule().rewrite(
        Observation(user, user, -1, 4))] * 2
    decoder = _RenderedPreviews(render_scene(_without(SCENE, 2), jitter=False))
    hook = PromptLoopHook(rule, [1], preview=decoder, keep_previews=False)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    images = tiny_pipe([FULL, FULL], num_inference_steps=4, guidance_scale=4.0, height=64, width=64,
                       generator=gens, callback_on_step_end=hook).images
    assert len(images) == 2 and decoder.calls == 1
    after = [e.prompt_after for e in hook.trace.entries if e.step == 1]
    assert after == [explicit_caption([SCENE.shapes[2], *SCENE.shapes[:2]])] * 2
    assert hook.final_prompts == after
    # the one-shot rule through the loop never looks: it restates the original prompt
    hook = PromptLoopHook(OneShotRule(), [1], preview=decoder, keep_previews=False)
    tiny_pipe([user], num_inference_steps=4, guidance_scale=4.0, height=64, width=64,
              generator=[torch.Generator().manual_seed(0)], callback_on_step_end=hook)
    assert hook.final_prompts == first[:1]


def test_candidate_rewrites_name_each_shape_first():
    cands = candidate_rewrites(FULL, 6)
    assert len(cands) == 6 and cands[0] == FULL
    firsts = {_shapes(parse_prompt(c))[0] for c in cands}
    assert firsts == set(SCENE.shapes)
    assert all(sorted(_shapes(parse_prompt(c))) == sorted(SCENE.shapes) for c in cands if not c.startswith("three"))


def test_phantom_captions_name_one_absent_shape_never_first():
    import random

    assert "phantom" in CAPTION_MIXES and set(CAPTION_MIXES["phantom"]) <= set(STYLES) | {"phantom"}
    rng = random.Random(0)
    for seed in range(200):
        scene = sample_scene(5_000_000 + seed)
        shapes = phantom_shapes(scene)
        assert len(shapes) == len(scene) + 1 and shapes[0] == scene.shapes[0]
        assert sorted(s for s in shapes if s in scene.shapes) == sorted(scene.shapes)
        assert phantom_shapes(scene) == shapes  # deterministic per scene
        assert parse_prompt(random_caption(scene, rng, CAPTION_MIXES["phantom"]))


def test_leaky_captions_swap_two_colours_and_nothing_else():
    import random

    assert set(CAPTION_MIXES["leaky"]) <= set(STYLES) | {"swapped"}
    rng = random.Random(0)
    swapped = 0
    for seed in range(200):
        scene = sample_scene(5_000_000 + seed)
        shapes = swapped_shapes(scene)
        assert [(s.kind, s.size, s.cell) for s in shapes] == [(s.kind, s.size, s.cell) for s in scene.shapes]
        changed = [i for i, (a, b) in enumerate(zip(shapes, scene.shapes)) if a.color != b.color]
        if len({s.color for s in scene.shapes}) < 2:
            assert changed == []
        else:  # exactly two shapes trade their colours
            i, j = changed
            assert (shapes[i].color, shapes[j].color) == (scene.shapes[j].color, scene.shapes[i].color)
            swapped += 1
        assert swapped_shapes(scene) == shapes  # deterministic per scene
        assert parse_prompt(random_caption(scene, rng, CAPTION_MIXES["leaky"]))
    assert swapped > 50


def test_preview_rule_rebinds_unplaced_shapes_to_the_colours_the_preview_shows():
    user = "a red circle and a blue square"  # no positions: the rule may move the shapes
    asked = explicit_caption(_shapes(parse_prompt(OneShotRule().rewrite(Observation(user, user, -1, 20)))))
    red, blue = _shapes(parse_prompt(asked))
    # the noise put blue where the prompt asked for the red circle and red where it asked for the square
    leaked = Scene((Shape("blue", "circle", red.size, red.cell), Shape("red", "square", blue.size, blue.cell)))
    obs = Observation(user, asked, 5, 20, preview=render_scene(leaked, jitter=False))
    rule = PreviewRule(rebind=True)
    got = _shapes(parse_prompt(rule.refine([obs])[0].text))
    assert got == (Shape("red", "circle", red.size, blue.cell), Shape("blue", "square", blue.size, red.cell))
    assert rule.log[-1].rebound and rule.log[-1].changed
    # the re-bound scene satisfies the user
    assert score_image(render_scene(Scene(got), jitter=False), user)["mean"] == 1.0
    # without rebind, or where the user placed the shapes, no shape is moved
    assert PreviewRule().refine([obs])[0].text != rule.refine([obs])[0].text
    placed = "a red circle at the top left and a blue square at the bottom right"
    target = OneShotRule().rewrite(Observation(placed, placed, -1, 20))
    r, b = _shapes(parse_prompt(target))
    leaked = Scene((Shape("blue", "circle", r.size, r.cell), Shape("red", "square", b.size, b.cell)))
    text = PreviewRule(rebind=True).refine([Observation(placed, target, 5, 20,
                                                        preview=render_scene(leaked, jitter=False))])[0].text
    assert {s.cell for s in _shapes(parse_prompt(text))} == {r.cell, b.cell}
    assert [s.cell for s in _shapes(parse_prompt(text)) if s.color == "red"] == [r.cell]


def test_rebind_candidates_are_every_binding_of_the_unplaced_shapes_and_exactly_k():
    from promptloop.worlds.shapes.controllers import rebind_candidates

    user = "a red circle and a blue square"
    cands = rebind_candidates(user, 4)
    assert len(cands) == 4 and cands[0] == OneShotRule().rewrite(Observation(user, user, -1, 20))
    cells = {tuple(s.cell for s in _shapes(parse_prompt(c)) if s.color == "red") for c in cands[:2]}
    assert len(cells) == 2  # the red circle in each of the two cells
    for prompt in training_prompts(24):  # one-shape prompts have fewer distinct rewrites: still k
        assert len(rebind_candidates(prompt, 6)) == 6
