"""PromptLoopHook on the four diffusers families, with tiny models built in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    EmptyPolicy,
    RaisingPolicy,
    SleepingPolicy,
    record_conditioning,
    run_kwargs,
    suffix_policy,
)

from promptloop import PromptLoopHook
from promptloop.testing import FAMILIES

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk"]


def _swap_positive(tensor: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Hand-written: replace the positive half (CFG) or the whole batch with ``new``."""
    n = new.shape[0]
    new = new.to(tensor.dtype)
    return torch.cat([tensor[:n], new]) if tensor.shape[0] == 2 * n else new


def reference_callback(family: str, steps: set[int], prompts: list[str], n: int, suffix: str):
    """A callback written by hand against each pipeline's own ``encode_prompt``."""
    current = [p for p in prompts for _ in range(n)]

    def callback(pipe, i, t, kw):
        if i not in steps:
            return kw
        current[:] = [c + suffix for c in current]
        device = pipe._execution_device
        if family == "sd":
            embeds, _ = pipe.encode_prompt(current, device, 1, False)
            kw["prompt_embeds"] = _swap_positive(kw["prompt_embeds"], embeds)
        elif family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(current, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            kw["prompt_embeds"] = _swap_positive(kw["prompt_embeds"], embeds)
            kw["add_text_embeds"] = _swap_positive(kw["add_text_embeds"], pooled)
        elif family == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(current, None, None, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=kw["prompt_embeds"].shape[1] - 77)
            kw["prompt_embeds"] = _swap_positive(kw["prompt_embeds"], embeds)
            kw["pooled_prompt_embeds"] = _swap_positive(kw["pooled_prompt_embeds"], pooled)
        else:
            embeds, _, _ = pipe.encode_prompt(current, None, device=device, num_images_per_prompt=1,
                                              max_sequence_length=kw["prompt_embeds"].shape[1])
            kw["prompt_embeds"] = _swap_positive(kw["prompt_embeds"], embeds)
        return kw

    inputs = {"sd": ["prompt_embeds"], "sdxl": ["prompt_embeds", "add_text_embeds"],
              "sd3": ["prompt_embeds", "pooled_prompt_embeds"], "flux": ["prompt_embeds"]}[family]
    return callback, inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_schedule_is_bit_identical_to_plain(tiny_pipes, family):
    pipe = tiny_pipes[family]
    plain = pipe(PROMPTS, **run_kwargs(family)).images
    hook = PromptLoopHook(suffix_policy(), schedule=None)
    hooked = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs(family)).images
    assert np.array_equal(plain, hooked)
    assert len(hook.trace) == 0 and hook.trace.original_prompts == PROMPTS


# FLUX is guidance-distilled (no classic CFG batch), so it runs once.
@pytest.mark.parametrize("family, cfg", [(f, c) for f in FAMILIES for c in (True, False) if f != "flux" or c])
def test_schedule_matches_hand_written_callback(tiny_pipes, family, cfg):
    pipe = tiny_pipes[family]
    steps, n = [1, 3], 2
    callback, inputs = reference_callback(family, set(steps), PROMPTS, n, ", oil painting")
    expected = pipe(PROMPTS, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs,
                    **run_kwargs(family, cfg=cfg, n=n)).images
    hook = PromptLoopHook(suffix_policy(), schedule=steps, preview_size=32)
    got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs(family, cfg=cfg, n=n)).images
    plain = pipe(PROMPTS, **run_kwargs(family, cfg=cfg, n=n)).images
    assert not np.array_equal(got, plain), "the refinement should change the image"
    assert np.array_equal(got, expected)
    assert hook.trace.final_prompts() == [p + ", oil painting, oil painting" for p in PROMPTS for _ in range(n)]
    assert [e.step for e in hook.trace.for_sample(0)] == steps


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_change_after_the_refinement_step_and_not_before(tiny_pipes, family):
    pipe = tiny_pipes[family]
    records, remove = record_conditioning(pipe)
    try:
        pipe(PROMPTS[:1], **run_kwargs(family, steps=6))
        plain = list(records)
        records.clear()
        pipe(PROMPTS[:1], callback_on_step_end=PromptLoopHook(suffix_policy(), schedule=[2]), **run_kwargs(family, steps=6))
        hooked = list(records)
    finally:
        remove()
    assert len(plain) == len(hooked) == 6
    for step in range(6):
        same = torch.equal(plain[step], hooked[step])
        assert same == (step <= 2), f"step {step}: conditioning {'changed' if not same else 'unchanged'}"
    if family != "flux":  # CFG: the negative row never changes
        assert torch.equal(plain[5][0], hooked[5][0])


def test_cfg_negative_rows_kept_and_positive_rows_swapped(tiny_pipes):
    pipe = tiny_pipes["sd"]
    records, remove = record_conditioning(pipe)
    try:
        pipe(PROMPTS, callback_on_step_end=PromptLoopHook(suffix_policy(), schedule=[0]), **run_kwargs("sd", steps=3))
    finally:
        remove()
    first, after = records[0], records[1]
    assert first.shape[0] == 4  # [neg, neg, pos, pos]
    assert torch.equal(first[:2], after[:2])
    expected, _ = pipe.encode_prompt([p + ", oil painting" for p in PROMPTS], pipe.device, 1, False)
    assert torch.allclose(after[2:], expected, atol=1e-6)


@pytest.mark.parametrize(
    "policy, reason",
    [(RaisingPolicy(), "error"), (SleepingPolicy(3.0), "timeout"), (EmptyPolicy(), "empty")],
    ids=["raises", "sleeps-past-timeout", "empty-text"],
)
def test_policy_failures_fall_back_and_generation_completes(tiny_pipes, policy, reason):
    pipe = tiny_pipes["sd"]
    plain = pipe(PROMPTS, **run_kwargs("sd")).images
    hook = PromptLoopHook(policy, schedule=[1, 3], timeout_s=0.5)
    got = pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sd")).images
    assert np.array_equal(got, plain)  # every sample kept its prompt
    entries = hook.trace.entries
    assert len(entries) == 2 * len(PROMPTS)
    assert {e.fallback for e in entries} == {reason}
    assert all(e.prompt_after == e.prompt_before for e in entries)
    assert hook.trace.final_prompts() == PROMPTS
    if reason == "error":
        assert "policy exploded" in entries[0].error


def test_two_prompts_two_images_get_per_sample_refinements(tiny_pipes):
    from promptloop import StaticPolicy

    pipe = tiny_pipes["sdxl"]
    policy = StaticPolicy(lambda obs: f"{obs.current_prompt} #{obs.sample_index}")
    records, remove = record_conditioning(pipe)
    hook = PromptLoopHook(policy, schedule=[1])
    try:
        pipe(PROMPTS, callback_on_step_end=hook, **run_kwargs("sdxl", n=2, steps=3))
    finally:
        remove()
    finals = hook.trace.final_prompts()
    assert finals == [f"{PROMPTS[0]} #0", f"{PROMPTS[0]} #1", f"{PROMPTS[1]} #2", f"{PROMPTS[1]} #3"]
    # Each sample's positive row holds its own refined prompt's embedding.
    expected, _, _, _ = pipe.encode_prompt(finals, device=pipe.device, num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
    assert torch.allclose(records[-1][4:], expected, atol=1e-5)
    previews = [e.preview for e in hook.trace.entries]
    assert all(p is not None and p.size[0] > 0 for p in previews) and len(previews) == 4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preview", ["vae", "linear"])
def test_previews_are_images_of_the_requested_size(tiny_pipes, family, preview, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLOOP_CACHE", str(tmp_path))
    hook = PromptLoopHook(suffix_policy(), schedule=[2], preview=preview, preview_size=48)
    tiny_pipes[family](PROMPTS[:1], callback_on_step_end=hook, **run_kwargs(family, steps=4))
    (entry,) = hook.trace.entries
    assert entry.preview.size == (48, 48)
    assert np.asarray(entry.preview).std() > 0  # not a blank image
    assert hook.trace.meta["preview_source"] in ("scheduler", "flow", "epsilon")


def test_hook_is_reusable_and_each_call_gets_a_fresh_trace(tiny_pipes):
    pipe = tiny_pipes["sd"]
    hook = PromptLoopHook(suffix_policy(), schedule=[1])
    pipe(PROMPTS[0], callback_on_step_end=hook, **run_kwargs("sd", steps=3))
    assert hook.trace.final_prompts() == [PROMPTS[0] + ", oil painting"]
    pipe(PROMPTS[1], callback_on_step_end=hook, **run_kwargs("sd", steps=3))
    assert hook.trace.original_prompts == [PROMPTS[1]]
    assert len(hook.trace.entries) == 1
    assert "step" not in pipe.scheduler.__dict__  # the scheduler is left as it was


def test_prompt_embeds_call_needs_prompt_on_the_hook(tiny_pipes):
    pipe = tiny_pipes["sd"]
    embeds, negative = pipe.encode_prompt(PROMPTS[0], pipe.device, 1, True)
    kwargs = run_kwargs("sd", steps=3)
    hook = PromptLoopHook(suffix_policy(), schedule=[1])
    pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, callback_on_step_end=hook, **kwargs)
    assert "disabled" in hook.trace.meta and len(hook.trace) == 0  # generation still completed
    hook = PromptLoopHook(suffix_policy(), schedule=[1], prompt=PROMPTS[0])
    pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, callback_on_step_end=hook, **run_kwargs("sd", steps=3))
    assert hook.trace.final_prompts() == [PROMPTS[0] + ", oil painting"]
