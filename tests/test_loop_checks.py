"""The loop checks every refinement, whatever produced it (issue 8, fault 7), and async requests
made while others are pending see the newest prompt and are recorded as seen (fault 8)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_kwargs, suffix_policy

from promptloop import PromptLoopHook, RefineLoop
from promptloop.refinement import Refinement

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk"]


class BarePolicy:
    """Written against the bare ``Policy`` protocol: no parsing, no checks of its own."""

    def __init__(self, text, **fields) -> None:
        self.text, self.fields = text, fields

    def refine(self, observations):
        return [Refinement(text=self.text, **self.fields) for _ in observations]


@pytest.fixture(scope="module")
def plain_images(tiny_pipes):
    return tiny_pipes["sd"](PROMPTS, **run_kwargs("sd")).images


@pytest.mark.parametrize(
    "text, reason",
    [("", "empty"), ("  \n\t ", "empty"), ('""', "empty"), ("a fox " * 150, "too_long"),
     ("a fox\x00in the snow", "unparsable"), ("a fox \ufffd", "unparsable"), (None, "unparsable")],
    ids=["empty", "whitespace", "quotes", "too-long", "control-char", "replacement-char", "not-a-str"],
)
def test_bad_refinements_from_a_bare_policy_fall_back_in_the_hook(tiny_pipes, plain_images, text, reason):
    pipe = tiny_pipes["sd"]
    hook = PromptLoopHook(BarePolicy(text, token_ids=[5, 6], logprobs=[-0.5, -1.0]), schedule=[1, 3])
    got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sd")).images
    assert np.array_equal(got, plain_images), "the rejected text must never be encoded"
    entries = hook.trace.entries
    assert len(entries) == 4 and {e.fallback for e in entries} == {reason}
    assert all(e.applied_step is None and e.prompt_after == e.prompt_before for e in entries)
    assert hook.trace.final_prompts() == PROMPTS
    # What the policy said is kept for the trace, and its tokens for training.
    assert all(e.raw_text == text and e.token_ids == [5, 6] and e.logprobs == [-0.5, -1.0] for e in entries)


def test_a_good_refinement_from_a_bare_policy_is_applied(tiny_pipes, plain_images):
    hook = PromptLoopHook(BarePolicy("a blue fox"), schedule=[1])
    got = tiny_pipes["sd"](PROMPTS, callback_on_step_end=hook, **run_kwargs("sd")).images
    assert not np.array_equal(got, plain_images)
    assert hook.trace.final_prompts() == ["a blue fox"] * 2
    assert all(e.fallback is None and e.applied_step == 1 for e in hook.trace.entries)


def test_the_length_limit_is_the_hooks_or_the_policys():
    policy = BarePolicy("x" * 50)
    assert RefineLoop(policy).max_prompt_chars == 600
    policy.max_prompt_chars = 40
    loop = RefineLoop(policy, [0])
    loop.start(["p"], 3)
    assert loop.at_step(0) == {} and loop.finish().entries[0].fallback == "too_long"
    loop = RefineLoop(policy, [0], max_prompt_chars=60)
    loop.start(["p"], 3)
    assert loop.at_step(0) == {0: "x" * 50}


def test_ahead_plans_are_checked_too():
    class BadPlan(BarePolicy):
        def plan(self, prompts, steps, num_steps):
            return [[Refinement(text=" "), Refinement(text="a cat, oil painting")] for _ in prompts]

    loop = RefineLoop(BadPlan(""), [0, 1], mode="ahead")
    loop.start(["a cat"], 4)
    assert loop.at_step(0) == {}
    assert loop.at_step(1) == {0: "a cat, oil painting"}
    assert [e.fallback for e in loop.finish().entries] == ["empty", None]


class Recording:
    """Appends ``+N`` (N = call number) and remembers the prompt each call saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def refine(self, observations):
        self.seen.append(observations[0].current_prompt)
        n = len(self.seen)
        return [Refinement(text=f"{o.current_prompt} +{n}") for o in observations]


@pytest.mark.parametrize(
    "schedule, delay, seen, changes, rows",
    [
        # Answer 1 lands after step 3, before step 3's own request is taken: that request sees it.
        ([1, 3], 2, ["p", "p +1"], {3: {0: "p +1"}, 5: {0: "p +1 +2"}},
         [(1, "p", "p +1", 3), (3, "p +1", "p +1 +2", 5)]),
        # Request 2 is taken while answer 1 is still in flight: it is based on the prompt without
        # it, and the trace records that prompt as the one it saw.
        ([1, 2], 3, ["p", "p"], {4: {0: "p +1"}, 5: {0: "p +2"}},
         [(1, "p", "p +1", 4), (2, "p", "p +2", 5)]),
    ],
    ids=["arrival-at-the-request-step", "request-while-another-is-pending"],
)
def test_async_requests_see_the_newest_prompt_and_are_recorded_as_seen(schedule, delay, seen, changes, rows):
    policy = Recording()
    loop = RefineLoop(policy, schedule, mode="async", async_delay=delay)
    loop.start(["p"], 10)
    got = {step: c for step in range(10) if (c := loop.at_step(step))}
    trace = loop.finish()
    assert policy.seen == seen
    assert got == changes
    assert [(e.step, e.prompt_before, e.prompt_after, e.applied_step) for e in trace.entries] == rows


def test_async_delay_through_the_hook_equals_sync_at_the_arrival_steps(tiny_pipes):
    pipe = tiny_pipes["sd"]
    sync = PromptLoopHook(suffix_policy(), schedule=[3, 5], mode="sync")
    expected = pipe(PROMPTS, callback_on_step_end=sync, **run_kwargs("sd", steps=8)).images
    hook = PromptLoopHook(suffix_policy(), schedule=[1, 3], mode="async", async_delay=2)
    got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sd", steps=8)).images
    assert hook.trace.final_prompts() == [p + ", oil painting, oil painting" for p in PROMPTS]
    assert np.array_equal(got, expected)
    second = [e for e in hook.trace.entries if e.step == 3]
    assert [e.prompt_before for e in second] == [p + ", oil painting" for p in PROMPTS]
