"""promptloop.capture: recording a run's scheduler steps and swapping in a step function."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers.utils import BaseOutput
from helpers import run_kwargs, suffix_policy

from promptloop import PromptLoopHook
from promptloop.capture import SchedulerCapture

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk"]


@dataclass
class StepWithLogProb(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    log_prob: torch.Tensor


def ddim_step_with_fake_logprob(scheduler, model_output, timestep, sample, *args, return_dict=True, **kwargs):
    """The scheduler's own DDIM step, plus a per-sample 'log-prob' (what a trainer would compute)."""
    out = type(scheduler).step(scheduler, model_output, timestep, sample, *args, return_dict=True, **kwargs)
    log_prob = -(out.prev_sample.float() ** 2).mean(dim=(1, 2, 3))
    return StepWithLogProb(out.prev_sample, out.pred_original_sample, log_prob)


@pytest.mark.parametrize("family, source", [("sd", "scheduler"), ("sd3", "flow")])
def test_records_every_step_of_a_run(tiny_pipes, family, source):
    pipe = tiny_pipes[family]
    kwargs = run_kwargs(family, cfg=False, steps=4)
    kwargs["output_type"] = "latent"
    with SchedulerCapture(pipe.scheduler, record=True) as capture:
        final = pipe(PROMPTS, **kwargs).images
        assert SchedulerCapture.on(pipe.scheduler) is capture
    assert "step" not in pipe.scheduler.__dict__, "the class's own step is back"
    records = capture.records
    assert len(records) == 4 and capture.seq == 4
    assert [float(r.timestep) for r in records] == [float(t) for t in pipe.scheduler.timesteps]
    for before, after in itertools.pairwise(records):
        assert after.sample is before.prev_sample  # the trajectory is a chain
    assert torch.equal(records[-1].prev_sample, final)
    x0, got_source = capture.x0(records[1])
    assert got_source == source and x0.shape == records[1].sample.shape
    assert all(r.model_output.shape == r.sample.shape for r in records)


def test_a_step_function_is_used_for_the_run_and_its_extras_recorded(tiny_pipes):
    pipe = tiny_pipes["sd"]
    plain = pipe(PROMPTS, **run_kwargs("sd")).images
    with SchedulerCapture(pipe.scheduler, record=True, step_fn=ddim_step_with_fake_logprob) as capture:
        same = pipe(PROMPTS, **run_kwargs("sd")).images
    assert np.array_equal(same, plain)
    assert all(r.extras["log_prob"].shape == (2,) for r in capture.records)
    assert capture.x0(capture.records[0])[1] == "scheduler"

    def damped(scheduler, model_output, timestep, sample, *args, **kwargs):
        out = type(scheduler).step(scheduler, model_output, timestep, sample, *args, **kwargs)
        return (out[0] * 0.5,) + tuple(out[1:])

    with SchedulerCapture(pipe.scheduler, step_fn=damped) as capture:
        changed = pipe(PROMPTS, **run_kwargs("sd")).images
    assert not np.array_equal(changed, plain) and capture.records == [] and capture.seq == 6
    assert np.array_equal(pipe(PROMPTS, **run_kwargs("sd")).images, plain), "swapped only for the run"


def test_the_hook_reuses_a_callers_capture_and_leaves_it_in_place(tiny_pipes):
    pipe = tiny_pipes["sd"]
    alone = PromptLoopHook(suffix_policy(), schedule=[1, 3])
    expected = pipe(PROMPTS, callback_on_step_end=alone, **run_kwargs("sd")).images
    assert SchedulerCapture.on(pipe.scheduler) is None, "the hook removes its own capture"
    hook = PromptLoopHook(suffix_policy(), schedule=[1, 3])
    with SchedulerCapture(pipe.scheduler, record=True) as capture:
        got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sd")).images
        assert SchedulerCapture.on(pipe.scheduler) is capture
        assert len(capture.records) == 6
    assert np.array_equal(got, expected)
    assert hook.trace.meta["preview_source"] == "scheduler"
    assert [p.size for p in (e.preview for e in hook.trace.entries)] == [p.size for p in
                                                                         (e.preview for e in alone.trace.entries)]


def test_one_capture_per_scheduler(tiny_pipes):
    scheduler = tiny_pipes["sd"].scheduler
    with SchedulerCapture(scheduler), pytest.raises(RuntimeError, match="already has"):
        SchedulerCapture(scheduler)
    with pytest.raises(ValueError, match="no scheduler step"):
        SchedulerCapture(scheduler).x0()
    SchedulerCapture.on(scheduler).remove()
    assert SchedulerCapture.on(scheduler) is None
