"""Schedule -> segment boundaries, and re-encoding at the right steps (no ComfyUI needed)."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch
from comfy_fakes import FakeBackend, FakeCLIP

from promptloop import RefineLoop, StaticPolicy
from promptloop.comfy_nodes.comfy_backend import PromptEncoder
from promptloop.comfy_nodes.segments import fixed_boundaries, run_segmented
from promptloop.schedule import RefineSchedule, segments


def suffix_policy(suffix: str = ", oil painting") -> StaticPolicy:
    return StaticPolicy(lambda obs: obs.current_prompt + suffix, name="suffix")


def run(policy, schedule, steps, *, mode="sync", batch=1, async_delay=None, prompt="a red fox", on_run=None,
        timeout_s=30.0):
    loop = RefineLoop(policy, schedule, mode=mode, timeout_s=timeout_s, async_delay=async_delay)
    backend = FakeBackend(steps, batch, on_run=on_run)
    clip = FakeCLIP()
    trace, info = run_segmented(loop, [prompt] * batch, steps, backend, PromptEncoder(clip), async_delay=async_delay)
    return trace, info, backend, clip


@pytest.mark.parametrize(
    ("spec", "steps", "bounds"),
    [
        ("0.2,0.4,0.6", 10, [2, 4, 6]),
        ("evenly:3", 20, [4, 9, 14]),
        ("5,10,15", 20, [5, 10, 15]),
        ("every:4", 10, [3, 7]),
        ("none", 10, []),
        ("9", 10, []),  # the last step is never a boundary: nothing would follow it
    ],
)
def test_schedule_to_segments(spec, steps, bounds):
    refine = RefineSchedule.parse(spec).resolve(steps)
    assert fixed_boundaries("sync", refine, steps) == bounds
    assert fixed_boundaries("ahead", refine, steps) == bounds
    _trace, info, backend, _ = run(suffix_policy(), spec, steps)
    got = [(s, e) for s, e, _ in backend.calls]
    assert got == segments(refine, steps)
    assert info.boundaries == bounds
    # contiguous, covering every step exactly once
    assert got[0][0] == 0 and got[-1][1] == steps
    assert all(a[1] == b[0] for a, b in itertools.pairwise(got))


def test_async_delay_adds_apply_boundaries():
    assert fixed_boundaries("async", [2, 5], 10, async_delay=2) == [2, 4, 5, 7]
    assert fixed_boundaries("async", [2, 7], 10, async_delay=2) == [2, 4, 7]  # 9 is the last step
    assert fixed_boundaries("async", [2, 5], 10, async_delay=None) == [2, 5]


def test_reencoding_happens_after_each_refine_step_and_not_before():
    steps = 10
    trace, info, backend, clip = run(suffix_policy(), "2,5", steps)
    assert clip.encoded == ["a red fox", "a red fox, oil painting", "a red fox, oil painting, oil painting"]
    assert [step for step, _ in info.encodes] == [-1, 2, 5]
    expected = {range(3): "a red fox", range(3, 6): "a red fox, oil painting",
                range(6, 10): "a red fox, oil painting, oil painting"}
    for span, text in expected.items():
        for step in span:
            cond = backend.positive_at(step)[0][0]
            assert torch.equal(cond, clip.embedding(text)), (step, text)
    assert [(e.step, e.applied_step) for e in trace.entries] == [(2, 2), (5, 5)]
    assert trace.meta["segments"] == [[0, 3], [3, 6], [6, 10]]
    assert trace.meta["reencoded_after_steps"] == [2, 5]
    # the policy saw the preview of the step that just finished
    assert backend.preview_calls == [2, 5]
    assert all(e.preview is not None for e in trace.entries)


def test_unchanged_prompt_is_not_reencoded():
    trace, _info, backend, clip = run(StaticPolicy(lambda obs: obs.current_prompt), "2,5", 10)
    assert clip.encoded == ["a red fox"]
    assert len(backend.calls) == 3 and all(c[2] is backend.calls[0][2] for c in backend.calls)
    assert len(trace.entries) == 2 and not any(e.changed for e in trace.entries)


def test_per_sample_prompts_are_batched():
    policy = StaticPolicy(lambda obs: f"{obs.current_prompt} #{obs.sample_index}" + " word" * 12 * obs.sample_index)
    trace, _info, backend, clip = run(policy, "3", 6, batch=3)
    before = backend.positive_at(0)
    after = backend.positive_at(4)
    assert before[0][0].shape[0] == 1  # one prompt for the whole batch: CLIPTextEncode's output
    cond, extras = after[0]
    assert cond.shape[0] == 3 and extras["pooled_output"].shape[0] == 3
    assert cond.shape[1] == 154  # sample 1 and 2 need two chunks: all repeated to the lcm
    for i in range(3):
        text = trace.final_prompts()[i]
        own = clip.embedding(text)
        assert torch.equal(cond[i : i + 1], own.repeat(1, 154 // own.shape[1], 1))
    assert [e.sample_index for e in trace.entries] == [0, 1, 2]


def test_policy_errors_fall_back_and_sampling_completes():
    class Raising:
        def refine(self, observations):
            raise RuntimeError("policy exploded")

    trace, info, backend, clip = run(Raising(), "1,3", 6)
    assert [(s, e) for s, e, _ in backend.calls] == [(0, 2), (2, 4), (4, 6)]
    assert clip.encoded == ["a red fox"]
    assert [e.fallback for e in trace.entries] == ["error", "error"]
    assert info.final_prompts == ["a red fox"]


def test_async_with_delay_applies_later():
    trace, info, backend, clip = run(suffix_policy(), "2", 10, mode="async", async_delay=3)
    assert [(s, e) for s, e, _ in backend.calls] == [(0, 3), (3, 6), (6, 10)]
    assert [step for step, _ in info.encodes] == [-1, 5]
    assert [(e.step, e.applied_step) for e in trace.entries] == [(2, 5)]
    assert torch.equal(backend.positive_at(5)[0][0], clip.embedding("a red fox"))
    assert torch.equal(backend.positive_at(6)[0][0], clip.embedding("a red fox, oil painting"))


def test_async_with_delay_equals_sync_at_the_apply_step():
    """The conditioning per step of async(k, delay d) is that of sync refining at k + d."""
    _, _, async_backend, _clip = run(suffix_policy(), "2", 10, mode="async", async_delay=3)
    _, _, sync_backend, _ = run(suffix_policy(), "5", 10, mode="sync")
    for step in range(10):
        assert torch.equal(async_backend.positive_at(step)[0][0], sync_backend.positive_at(step)[0][0])


def test_async_on_arrival_runs_single_steps_until_the_answer_lands():
    release = threading.Event()
    arrived = threading.Event()

    class Gated:
        def refine(self, observations):
            release.wait(10)
            out = suffix_policy().refine(observations)
            arrived.set()
            return out

    def on_run(step):
        if step == 5:  # the answer arrives while step 5 runs
            release.set()
            arrived.wait(10)

    trace, _info, backend, clip = run(Gated(), "2", 10, mode="async", async_delay=None, on_run=on_run)
    got = [(s, e) for s, e, _ in backend.calls]
    assert got == [(0, 3), (3, 4), (4, 5), (5, 6), (6, 10)]
    assert [(e.step, e.applied_step) for e in trace.entries] == [(2, 5)]
    assert torch.equal(backend.positive_at(6)[0][0], clip.embedding("a red fox, oil painting"))


def test_async_answer_too_late_is_recorded_not_applied():
    release = threading.Event()

    class Slow:
        def refine(self, observations):
            release.wait(10)
            return suffix_policy().refine(observations)

    try:
        trace, info, _backend, clip = run(Slow(), "2", 6, mode="async", async_delay=None)
    finally:
        release.set()
    assert clip.encoded == ["a red fox"]
    assert [e.fallback for e in trace.entries] == ["not_arrived"]
    assert info.final_prompts == ["a red fox"]


def test_ahead_plans_once_and_never_asks_for_previews():
    calls = {"refine": 0, "plan": 0}
    inner = suffix_policy()

    class Counting:
        def refine(self, observations):
            calls["refine"] += 1
            return inner.refine(observations)

        def plan(self, prompts, steps, num_steps):
            calls["plan"] += 1
            return inner.plan(prompts, steps, num_steps)

    _trace, info, backend, _clip = run(Counting(), "2,5", 10, mode="ahead", batch=2)
    assert calls == {"refine": 0, "plan": 1}
    assert backend.preview_calls == []
    assert [step for step, _ in info.encodes] == [-1, 2, 5]
    assert [(s, e) for s, e, _ in backend.calls] == [(0, 3), (3, 6), (6, 10)]


def test_interrupt_stops_sampling_and_finishes_the_loop():
    class Interrupted(Exception):
        pass

    state = {"n": 0}

    def check():
        state["n"] += 1
        if state["n"] > 2:
            raise Interrupted

    loop = RefineLoop(suffix_policy(), "1,3", mode="async", async_delay=1)
    backend = FakeBackend(6)
    with pytest.raises(Interrupted):
        run_segmented(loop, ["x"], 6, backend, PromptEncoder(FakeCLIP()), async_delay=1, check_interrupt=check)
    assert loop._worker is None  # finish() ran: no policy thread left behind
    assert len(backend.calls) == 1
