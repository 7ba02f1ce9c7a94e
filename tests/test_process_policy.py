"""ProcessPolicy: any policy served from a child process (no GIL contention with sampling)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from helpers import make_raising_policy, make_suffix_policy, run_kwargs

from promptloop import Observation, PromptLoopHook
from promptloop.policies.process import ProcessPolicy


@pytest.fixture(scope="module")
def process_policy():
    with ProcessPolicy(partial(make_suffix_policy, ", watercolor")) as policy:
        yield policy


def test_refine_and_plan_cross_the_process_boundary(process_policy):
    obs = [Observation("a fox", "a fox", 2, 10, sample_index=i) for i in range(3)]
    assert [r.text for r in process_policy.refine(obs)] == ["a fox, watercolor"] * 3
    plans = process_policy.plan(["a fox"], [2, 5], 10)
    assert [r.text for r in plans[0]] == ["a fox, watercolor", "a fox, watercolor, watercolor"]


def test_async_hook_with_a_process_policy_matches_sync_in_process(tiny_pipes, process_policy):
    pipe = tiny_pipes["sd"]
    prompts = ["a red fox", "a blue car"]
    hook = PromptLoopHook(process_policy, schedule=[1], mode="async", async_delay=2)
    got = pipe(prompts, callback_on_step_end=hook, **run_kwargs("sd")).images
    sync = PromptLoopHook(make_suffix_policy(", watercolor"), schedule=[3])
    expected = pipe(prompts, callback_on_step_end=sync, **run_kwargs("sd")).images
    assert np.array_equal(got, expected)


def test_errors_in_the_child_become_fallbacks(tiny_pipes):
    with ProcessPolicy(make_raising_policy) as policy:
        with pytest.raises(RuntimeError, match="policy exploded"):
            policy.refine([Observation("a", "a", 0, 4)])
        hook = PromptLoopHook(policy, schedule=[1])
        tiny_pipes["sd"]("a red fox", callback_on_step_end=hook, **run_kwargs("sd", steps=3))
    assert [e.fallback for e in hook.trace.entries] == ["error"]


def test_a_factory_that_fails_is_reported_at_start():
    with pytest.raises(RuntimeError, match="failed to start"):
        ProcessPolicy(partial(int, "not a number"))
