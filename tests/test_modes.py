"""Refinement modes: sync, async, ahead (through the diffusers hook and the bare RefineLoop)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import CountingPolicy, SleepingPolicy, record_conditioning, run_kwargs, suffix_policy

from promptloop import PromptLoopHook, RefineLoop, StaticPolicy

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk"]


def test_async_with_forced_arrival_equals_sync_at_that_step(tiny_pipes):
    pipe = tiny_pipes["sd"]
    sync = PromptLoopHook(suffix_policy(), schedule=[3], mode="sync")
    expected = pipe(PROMPTS, callback_on_step_end=sync, **run_kwargs("sd", n=2)).images
    hook = PromptLoopHook(suffix_policy(), schedule=[1], mode="async", async_delay=2)
    got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sd", n=2)).images
    assert np.array_equal(got, expected)
    assert {(e.step, e.applied_step) for e in hook.trace.entries} == {(1, 3)}
    assert hook.trace.final_prompts() == sync.trace.final_prompts()


def test_async_applies_on_arrival_without_waiting(tiny_pipes):
    hook = PromptLoopHook(suffix_policy(), schedule=[1], mode="async")
    tiny_pipes["sd"](PROMPTS, callback_on_step_end=hook, **run_kwargs("sd", steps=8))
    entries = hook.trace.entries
    assert len(entries) == 2 and all(e.fallback is None for e in entries)
    assert all(e.applied_step is not None and e.applied_step > e.step for e in entries)
    assert hook.trace.final_prompts() == [p + ", oil painting" for p in PROMPTS]


def test_async_policy_slower_than_the_run_keeps_the_original_prompt(tiny_pipes):
    pipe = tiny_pipes["sd"]
    plain = pipe(PROMPTS, **run_kwargs("sd")).images
    hook = PromptLoopHook(SleepingPolicy(5.0), schedule=[0, 2], mode="async", timeout_s=None)
    start = time.perf_counter()
    got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sd")).images
    assert time.perf_counter() - start < 4.0, "async sampling must not wait for the policy"
    assert np.array_equal(got, plain)
    assert hook.trace.final_prompts() == PROMPTS
    assert len(hook.trace.entries) == 4
    assert {e.fallback for e in hook.trace.entries} == {"not_arrived"}
    assert all(e.applied_step is None for e in hook.trace.entries)


def test_ahead_calls_the_policy_once_per_batch_and_never_during_sampling(tiny_pipes):
    pipe = tiny_pipes["sd"]
    policy = CountingPolicy(suffix_policy())
    calls_seen_by_denoiser = []
    _records, remove = record_conditioning(pipe)
    handle = pipe.unet.register_forward_pre_hook(
        lambda *_: calls_seen_by_denoiser.append((policy.plan_calls, policy.refine_calls)))
    try:
        hook = PromptLoopHook(policy, schedule=[1, 3], mode="ahead")
        got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sd", n=2)).images
    finally:
        handle.remove()
        remove()
    assert policy.plan_calls == 1 and policy.refine_calls == 0
    assert set(calls_seen_by_denoiser) == {(1, 0)}, "the plan must exist before the first step"
    sync = PromptLoopHook(suffix_policy(), schedule=[1, 3], mode="sync")
    expected = pipe(PROMPTS, callback_on_step_end=sync, **run_kwargs("sd", n=2)).images
    assert np.array_equal(got, expected)
    assert all(e.preview is None for e in hook.trace.entries)


def test_ahead_with_a_failing_plan_keeps_prompts():
    class NoPlan:
        def refine(self, observations):
            raise AssertionError("must not be called")

    loop = RefineLoop(NoPlan(), [1, 2], mode="ahead")
    loop.start(["a cat"], 5)
    assert loop.at_step(0) == {} and loop.at_step(1) == {} and loop.at_step(2) == {}
    trace = loop.finish()
    assert {e.fallback for e in trace.entries} == {"error"}
    assert trace.final_prompts() == ["a cat"]


def test_sync_loop_records_history_and_timesteps():
    seen = []

    def rewrite(obs):
        seen.append(list(obs.history))
        return f"{obs.original_prompt} v{len(obs.history) + 1}"

    loop = RefineLoop(StaticPolicy(rewrite), [0, 2], mode="sync")
    loop.start(["a cat"], 4)
    assert loop.at_step(0, 900.0) == {0: "a cat v1"}
    assert loop.at_step(1, 600.0) == {}
    assert loop.at_step(2, 300.0) == {0: "a cat v2"}
    assert loop.at_step(3, 0.0) == {}
    trace = loop.finish()
    assert seen == [[], ["a cat"]]
    assert [e.timestep for e in trace.entries] == [900.0, 300.0]


def test_async_answers_are_applied_in_request_order():
    class Slow:
        def __init__(self):
            self.n = 0

        def refine(self, observations):
            self.n += 1
            time.sleep(0.2 if self.n == 1 else 0.0)
            return suffix_policy(f" {self.n}").refine(observations)

    loop = RefineLoop(Slow(), [0, 1], mode="async")
    loop.start(["p"], 50)
    applied = {}
    for step in range(50):
        change = loop.at_step(step)
        if change:
            applied[step] = change
        time.sleep(0.02)
    trace = loop.finish()
    # Request 2 saw the prompt of step 1 ("p": request 1 had not arrived) and the trace says so;
    # the newest answer wins, and answers are applied in the order they were requested.
    assert trace.final_prompts() == ["p 2"]
    first, second = sorted(trace.entries, key=lambda e: e.applied_step)
    assert (first.step, first.prompt_after) == (0, "p 1")
    assert (second.step, second.prompt_before, second.prompt_after) == (1, "p", "p 2")
    assert first.applied_step <= second.applied_step


def test_invalid_mode_and_delay_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        RefineLoop(suffix_policy(), mode="later")
    with pytest.raises(ValueError, match="async_delay"):
        RefineLoop(suffix_policy(), mode="async", async_delay=-1)


def test_planned_apply_steps_and_pending_for_segmenting_samplers():
    sync = RefineLoop(suffix_policy(), [2, 5], mode="sync")
    sync.start(["p"], 10)
    assert sync.planned_apply_steps() == [2, 5] and not sync.has_pending
    delayed = RefineLoop(suffix_policy(), [2, 7], mode="async", async_delay=2)
    delayed.start(["p"], 10)
    assert delayed.planned_apply_steps() == [4]  # 7 + 2 is past the last useful step
    delayed.at_step(2)
    assert delayed.has_pending
    delayed.at_step(4)
    assert not delayed.has_pending
    delayed.finish()
    ahead = RefineLoop(suffix_policy(), [2, 5], mode="ahead")
    ahead.start(["p"], 10)
    assert ahead.planned_apply_steps() == [2, 5]


def test_import_promptloop_is_light():
    import subprocess
    import sys

    code = "import sys, promptloop; from promptloop import RefineLoop, Trace; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
