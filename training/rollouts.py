"""Rollouts of the real loop (a diffusers pipeline driven by :class:`~promptloop.PromptLoopHook`)
turned into per-action training records.

One call samples ``num_generations`` images per prompt in one batched pipeline call
(``num_images_per_prompt=G``; with a random schedule each sample refines at its own steps, or
each group at its own with ``share_noise``),
scores the final images with a reward from the registry, and returns one
:class:`ActionRecord` per policy generation: the exact conversation the policy saw (rebuilt from
the trace's unchanged observation snapshot and system prompt), the sampled token ids and their
log-probs, the trajectory it belongs to and that trajectory's reward. Every trainer that trains
the policy (GRPO today) and evaluation share this module.

``schedule="oneshot"`` is the RePrompt-style baseline: the same policy rewrites each prompt once
before sampling (no preview, :func:`promptloop.oneshot.oneshot_rewrite`, which ``promptloop
eval`` uses too), and the pipeline runs on the rewritten prompts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from promptloop import PromptLoopHook
from promptloop.oneshot import is_oneshot, oneshot_rewrite
from promptloop.policies.base import SamplingConfig
from promptloop.policies.messages import (
    PLAN_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    Message,
    build_messages,
    build_plan_messages,
)
from promptloop.rewards.registry import CombinedReward
from promptloop.schedule import RefineSchedule
from promptloop.trace import Trace, TraceEntry
from promptloop.training.runtime import derived_seed

#: Fallbacks that still come with generated tokens (the policy wrote something unusable).
TOKEN_FALLBACKS = ("empty", "too_long", "truncated", "unparsable")


@dataclass
class ActionRecord:
    """One policy generation inside a trajectory."""

    trajectory: int  # index of the sample in the rollout batch
    group: int  # index of its prompt: the G samples of one prompt share it
    step: int
    conversation: list[Message] = field(repr=False)
    token_ids: list[int] = field(repr=False)
    old_logprobs: list[float] = field(repr=False)
    fallback: str | None = None


@dataclass
class RolloutBatch:
    """A batch of trajectories: images, traces, rewards and the actions that produced them."""

    prompts: list[str]  # one per trajectory (each prompt repeated G times, consecutively)
    images: list[Image.Image]
    trace: Trace
    actions: list[ActionRecord]
    reward_terms: dict[str, list[float]]
    rewards: list[float]  # combined reward per trajectory (before any fallback penalty)
    fallbacks: list[int]  # fallback refinements (with tokens) per trajectory
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_trajectories(self) -> int:
        return len(self.prompts)

    def penalised_rewards(self, penalty: float) -> list[float]:
        """Rewards minus ``penalty`` for each fallback refinement of the trajectory."""
        return [r - penalty * f for r, f in zip(self.rewards, self.fallbacks)]


class _TimedPolicy:
    """Forwards ``refine``/``plan`` (with ``sampling=`` when given, so the policy's own default
    sampling is left untouched) and adds up the time spent in them."""

    def __init__(self, policy: Any, sampling: SamplingConfig | None = None) -> None:
        self.policy = policy
        self.options: dict[str, Any] = {"sampling": sampling} if sampling is not None else {}
        self.seconds = 0.0
        self.system_prompt = getattr(policy, "system_prompt", None)
        if hasattr(policy, "messages_for"):
            self.messages_for = policy.messages_for

    def refine(self, observations):
        start = time.perf_counter()
        try:
            return self.policy.refine(observations, **self.options)
        finally:
            self.seconds += time.perf_counter() - start

    def plan(self, prompts, steps, num_steps):
        start = time.perf_counter()
        try:
            return self.policy.plan(prompts, steps, num_steps, **self.options)
        finally:
            self.seconds += time.perf_counter() - start


def conversation_of(entry: TraceEntry) -> list[Message] | None:
    """The exact messages the policy was shown for ``entry`` (``None`` without a snapshot).

    For an ``ahead`` plan this is the planning conversation (one generation wrote every line).
    """
    obs = entry.observation
    if obs is None:
        return None
    if entry.plan_steps is not None:
        return build_plan_messages(obs.original_prompt, list(entry.plan_steps), obs.num_steps,
                                   system_prompt=entry.system_prompt or PLAN_SYSTEM_PROMPT)
    return build_messages(obs, system_prompt=entry.system_prompt or SYSTEM_PROMPT)


def actions_from_trace(trace: Trace, num_generations: int) -> list[ActionRecord]:
    """One record per policy generation with tokens (a plan counts once, at its first line)."""
    actions = []
    for entry in sorted(trace.entries, key=lambda e: (e.sample_index, e.step)):
        if not entry.token_ids or entry.logprobs is None:
            continue  # errors, timeouts, function policies: nothing to train on
        if entry.plan_index not in (None, 0):
            continue
        conversation = conversation_of(entry)
        if conversation is None:
            continue
        actions.append(ActionRecord(
            trajectory=entry.sample_index, group=entry.sample_index // num_generations, step=entry.step,
            conversation=conversation, token_ids=list(entry.token_ids), old_logprobs=list(entry.logprobs),
            fallback=entry.fallback,
        ))
    return actions


def rollout(
    pipeline: Any,
    policy: Any,
    prompts: Sequence[str],
    reward: CombinedReward,
    *,
    num_generations: int,
    schedule: str | RefineSchedule,
    seed: int,
    mode: str = "sync",
    num_inference_steps: int = 10,
    guidance_scale: float = 5.0,
    height: int | None = None,
    width: int | None = None,
    preview: str = "vae",
    preview_size: int = 56,
    sampling: SamplingConfig | None = None,
    share_noise: bool = False,
) -> RolloutBatch:
    """Sample ``num_generations`` trajectories per prompt through the hook and score them.

    ``seed`` fixes the initial latents and a random schedule's draws; ``sampling`` decodes every
    policy call of the rollout (passed per call to a
    :class:`~promptloop.policies.base.GenerativePolicy`; default: the policy's own);
    ``share_noise``: the rollouts of one prompt start from the same latents (one generator per
    sample, seeded per prompt) and refine at the same steps (a random schedule draws once per
    group), so they differ only by the policy's own choices. Returns the batch with one record
    per policy action.
    """
    prompts = list(prompts)
    timed = _TimedPolicy(policy, sampling)
    per_sample = [p for p in prompts for _ in range(num_generations)]
    if share_noise:
        generator = [torch.Generator(device="cpu").manual_seed(derived_seed(int(seed), 7919 + group))
                     for group in range(len(prompts)) for _ in range(num_generations)]
    else:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
    call = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                num_images_per_prompt=num_generations, generator=generator, output_type="pil")
    if height:
        call.update(height=height, width=width)
    start = time.perf_counter()
    if is_oneshot(schedule):
        trace, conditioning = oneshot_rewrite(timed, per_sample, num_inference_steps)
        # One prompt per sample now: the pipeline gets the rewritten prompts, one image each.
        call["num_images_per_prompt"] = 1
        images = pipeline(conditioning, **call).images
        preview_s = encode_s = 0.0
    else:
        parsed = RefineSchedule.parse(schedule)
        if parsed.per_sample:  # a shared-noise group also shares its random refinement steps
            group = num_generations if share_noise else 1
            parsed = dataclasses.replace(parsed, seed=int(seed), group_size=group)
        hook = PromptLoopHook(timed, parsed, mode=mode, preview=preview, preview_size=preview_size,
                              timeout_s=None, keep_previews=False)
        images = pipeline(prompts, callback_on_step_end=hook, **call).images
        trace = hook.trace
        preview_s, encode_s = float(trace.meta.get("preview_s", 0.0)), float(trace.meta.get("encode_s", 0.0))
    sampling_s = time.perf_counter() - start
    start = time.perf_counter()
    final = trace.final_prompts()
    metadata = [{"final_prompt": f, "original_prompt": p} for f, p in zip(final, per_sample)]
    terms = reward.terms(images, per_sample, metadata)
    rewards = reward.combine(terms)
    reward_s = time.perf_counter() - start
    actions = actions_from_trace(trace, num_generations)
    fallbacks = [0] * len(per_sample)
    for action in actions:
        if action.fallback in TOKEN_FALLBACKS:
            fallbacks[action.trajectory] += 1
    timings = {
        "time/rollout_policy_s": timed.seconds,
        "time/rollout_preview_s": preview_s,
        "time/rollout_encode_s": encode_s,
        "time/rollout_diffusion_s": max(0.0, sampling_s - timed.seconds - preview_s - encode_s),
        "time/reward_s": reward_s,
    }
    return RolloutBatch(per_sample, list(images), trace, actions, terms, rewards, fallbacks, timings)
