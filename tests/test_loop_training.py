"""What training needs from the loop: per-sample random schedules, observation snapshots, plans."""

from __future__ import annotations

import numpy as np
from helpers import CountingPolicy, run_kwargs, suffix_policy

from promptloop import PromptLoopHook
from promptloop.loop import RefineLoop
from promptloop.policies.messages import SYSTEM_PROMPT
from promptloop.schedule import RefineSchedule

SUFFIX = ", oil painting"


def per_sample_reference_callback(sample_steps: list[list[int]], prompts: list[str]):
    """Hand-written SD callback: sample s gets SUFFIX appended after each of its own steps."""
    current = list(prompts)

    def callback(pipe, i, t, kw):
        changed = [s for s, steps in enumerate(sample_steps) if i in steps]
        if not changed:
            return kw
        for s in changed:
            current[s] = current[s] + SUFFIX
        embeds, _ = pipe.encode_prompt([current[s] for s in changed], pipe._execution_device, 1, False)
        n = len(current)
        new = kw["prompt_embeds"].clone()
        offset = new.shape[0] - n  # CFG: negatives first
        for row, s in enumerate(changed):
            new[offset + s] = embeds[row]
        kw["prompt_embeds"] = new
        return kw

    return callback


def test_group_samples_refine_at_their_own_random_steps(tiny_pipes):
    pipe, g, steps = tiny_pipes["sd"], 4, 8
    schedule = RefineSchedule.random(2, seed=11)
    sample_steps = schedule.resolve_samples(steps, g)
    assert len({tuple(s) for s in sample_steps}) > 1, "the G samples should draw different steps"
    prompt = "a red fox in the snow"
    hook = PromptLoopHook(suffix_policy(SUFFIX), schedule=schedule, preview_size=32)
    got = pipe(prompt, callback_on_step_end=hook, **run_kwargs("sd", steps=steps, n=g)).images
    for s in range(g):
        assert [e.step for e in hook.trace.for_sample(s)] == sample_steps[s]
    assert hook.trace.meta["sample_steps"] == sample_steps
    expected = pipe(prompt, callback_on_step_end=per_sample_reference_callback(sample_steps, [prompt] * g),
                    callback_on_step_end_tensor_inputs=["prompt_embeds"], **run_kwargs("sd", steps=steps, n=g)).images
    assert np.array_equal(got, expected)


def test_random_schedule_is_resolved_once_so_prepare_and_start_agree():
    policy = CountingPolicy(suffix_policy())
    loop = RefineLoop(policy, "random:3", mode="ahead")  # no seed: every resolution differs
    prompts = ["a", "a", "a", "b"]
    loop.prepare(prompts, 30)
    loop.start(prompts, 30)
    for step in range(30):
        loop.at_step(step)
    trace = loop.finish()
    assert policy.plan_calls >= 1
    for s in range(4):
        entries = trace.for_sample(s)
        assert [e.step for e in entries] == loop.sample_steps[s] and len(entries) == 3
        assert [e.plan_index for e in entries] == [0, 1, 2]
        assert all(e.plan_steps == loop.sample_steps[s] for e in entries)
    assert len({tuple(s) for s in loop.sample_steps}) > 1


def test_trace_entries_keep_an_unchanged_snapshot_of_what_the_policy_saw():
    from PIL import Image

    seen = []

    def rewrite(obs):
        seen.append((obs.current_prompt, list(obs.history), obs.step))
        return obs.current_prompt + " x"

    from promptloop import StaticPolicy

    loop = RefineLoop(StaticPolicy(rewrite), [1, 3], mode="async", async_delay=1, keep_previews=False)
    loop.start(["p0", "p1"], 6)
    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(2)]
    for step in range(6):
        loop.at_step(step, previews=images)
    trace = loop.finish()
    assert len(trace.entries) == 4
    for entry in trace.entries:
        obs = entry.observation
        assert entry.preview is None, "previews are not kept in the saved trace"
        assert obs.preview is images[entry.sample_index], "the snapshot keeps the preview in memory"
        assert (obs.current_prompt, obs.history, obs.step) in seen
        assert obs.step == entry.step and obs.num_steps == 6
        assert entry.system_prompt is None  # a StaticPolicy has no system prompt
    second = next(e for e in trace.entries if e.step == 3 and e.sample_index == 0)
    assert second.observation.current_prompt == "p0 x" and second.observation.history == ["p0"]
    assert "observation" not in second.to_dict()


def test_generative_policies_record_their_system_prompt(tiny_policy):
    loop = RefineLoop(tiny_policy, [0], keep_previews=False)
    loop.start(["a red fox"], 3)
    loop.at_step(0, previews=[None])
    entry = loop.finish().entries[0]
    assert entry.system_prompt == SYSTEM_PROMPT
    assert entry.observation.current_prompt == "a red fox"
    assert entry.token_ids
