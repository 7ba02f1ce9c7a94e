"""The one way to sample images with a policy in the loop.

:func:`sample` takes a batch of prompts, one noise seed per image, and optionally a policy with
its schedule and mode, and returns the images and the :class:`~promptloop.trace.Trace`. It covers
the three ways a policy can take part: refining during denoising (the loop's
:class:`~promptloop.hook.PromptLoopHook`), rewriting once before sampling (``schedule="oneshot"``,
:func:`~promptloop.oneshot.oneshot_rewrite`), and not at all (``policy=None``: the backbone alone,
an empty trace). GRPO's rollouts, ``promptloop eval`` (and the ShapesWorld experiment built on it),
the ShapesWorld evaluation and baselines, and the ShapesWorld demo all sample through it.

Noise convention
----------------
Image ``j`` of a call starts from ``torch.Generator("cpu").manual_seed(noise_seeds[j])``: its
starting latents depend on its own seed only, not on the batch it is sampled in. A run with
sampling seed ``s`` gives its ``i``-th image the seed :func:`image_seed` ``(s, i) = s * 100003 + i``
(for ``s = 0``, simply ``i``). So the same (prompt, image seed) starts from the same latents in
training, evaluation and the demo. GRPO's rollouts with ``share_noise`` give the G samples of
prompt ``g`` its seed ``image_seed(s, g)``; without it, sample ``j`` has ``image_seed(s, j)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from promptloop.hook import PromptLoopHook
from promptloop.oneshot import is_oneshot, oneshot_rewrite
from promptloop.policies.base import Policy, SamplingConfig
from promptloop.preview import PreviewDecoder
from promptloop.schedule import RefineSchedule
from promptloop.trace import Trace

#: Image ``i`` of sampling seed ``s`` starts from the noise seed ``s * NOISE_STRIDE + i``.
NOISE_STRIDE = 100003


def image_seed(seed: int, index: int) -> int:
    """The noise seed of image ``index`` of a run with sampling seed ``seed`` (reduced modulo
    2**64, the range of a generator's seed; seeds below 2**64 / 100003 are never reduced)."""
    return (int(seed) * NOISE_STRIDE + int(index)) % 2**64


def noise_generators(noise_seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with that image's noise seed."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in noise_seeds]


def sample(
    pipe: Any,
    prompts: Sequence[str],
    noise_seeds: Sequence[int],
    *,
    policy: Policy | None = None,
    schedule: RefineSchedule | str | Sequence[int | float] | None = "evenly:3",
    mode: str = "sync",
    preview: str | PreviewDecoder = "vae",
    preview_size: int = 256,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    height: int | None = None,
    width: int | None = None,
    timeout_s: float | None = 60.0,
    keep_previews: bool = False,
    sampling: SamplingConfig | None = None,
    schedule_seed: int | None = None,
    group_size: int | None = None,
) -> tuple[list[Image.Image], Trace]:
    """Images of ``prompts`` (image ``j`` from noise seed ``noise_seeds[j]``) and the trace.

    Args:
        pipe: a diffusers text-to-image pipeline.
        prompts: one prompt per image.
        noise_seeds: one noise seed per image (see the module's noise convention).
        policy: the policy; ``None`` samples with the backbone alone (an empty trace).
        schedule: where the policy refines (see :class:`~promptloop.schedule.RefineSchedule`), or
            ``"oneshot"``: it rewrites each prompt once before sampling.
        mode, preview, preview_size, timeout_s, keep_previews: the loop's, see
            :class:`~promptloop.hook.PromptLoopHook`.
        sampling: decode every policy call of this batch with these settings (default: the
            policy's own).
        schedule_seed, group_size: a random schedule's draw: its seed, and how many consecutive
            samples share one draw (a GRPO group with shared noise); ``None`` keeps the schedule's.
    """
    prompts = list(prompts)
    noise_seeds = list(noise_seeds)
    if len(noise_seeds) != len(prompts):
        raise ValueError(f"{len(noise_seeds)} noise seeds for {len(prompts)} prompts; give one per image")
    call: dict[str, Any] = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                            "output_type": "pil", "generator": noise_generators(noise_seeds)}
    if height:
        call["height"] = height
    if width:
        call["width"] = width
    options = {"sampling": sampling} if sampling is not None else {}
    if policy is None:
        images = pipe(prompts, **call).images
        trace = Trace(original_prompts=prompts, meta={"mode": "none", "num_steps": num_inference_steps})
    elif is_oneshot(schedule):
        trace, rewritten = oneshot_rewrite(policy, prompts, num_inference_steps, **options)
        images = pipe(rewritten, **call).images
    else:
        parsed = RefineSchedule.parse(schedule)
        if parsed.per_sample and (schedule_seed is not None or group_size is not None):
            parsed = dataclasses.replace(
                parsed, seed=parsed.seed if schedule_seed is None else int(schedule_seed),
                group_size=parsed.group_size if group_size is None else int(group_size))
        hook = PromptLoopHook(policy, parsed, mode=mode, preview=preview, preview_size=preview_size,
                              timeout_s=timeout_s, keep_previews=keep_previews, policy_options=options)
        images = pipe(prompts, callback_on_step_end=hook, **call).images
        trace = hook.trace
    return list(images), trace
