"""Rollouts of the real loop turned into per-action training records.

One call samples ``num_generations`` images per prompt with :func:`promptloop.rollout.sample`
(the library's one sampling path, so a rollout starts from the same latents as ``promptloop eval``
for the same prompt and image seed: sample ``j`` of a call with ``seed`` s has the noise seed
``image_seed(s, j)``, or with ``share_noise`` the G samples of prompt ``g`` share ``image_seed(s,
g)``; with a random schedule each sample refines at its own steps, or each group at its own with
``share_noise``), scores the final images with a reward from the registry, and returns one
:class:`ActionRecord` per policy generation: the exact messages the policy was given (as it
reported them, recorded in the trace), the sampled token ids and their log-probs, the trajectory
it belongs to and that trajectory's reward. Every trainer that trains the policy (GRPO today)
shares this module.

``schedule="oneshot"`` is the RePrompt-style baseline: the same policy rewrites each prompt once
before sampling (no preview, :func:`promptloop.oneshot.oneshot_rewrite`, which ``promptloop
eval`` uses too), and the pipeline runs on the rewritten prompts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from promptloop.policies.base import SamplingConfig
from promptloop.policies.messages import Message
from promptloop.rewards.registry import CombinedReward
from promptloop.rollout import image_seed, sample
from promptloop.schedule import RefineSchedule
from promptloop.trace import Trace

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


def concat_groups(parts: Sequence[tuple[RolloutBatch, Sequence[int]]], num_generations: int) -> RolloutBatch:
    """The listed groups (prompt indices) of each batch, in order, as one batch: trajectories,
    actions and trace entries renumbered, timings added up (dynamic sampling's kept groups)."""
    prompts, images, entries, actions, rewards, fallbacks = [], [], [], [], [], []
    terms: dict[str, list[float]] = {}
    timings: dict[str, float] = {}
    sample_steps: list[list[int]] = []
    for batch, groups in parts:
        for key, value in batch.timings.items():
            timings[key] = timings.get(key, 0.0) + value
        for g in groups:
            first = len(prompts) // num_generations  # the group's index in the result
            old = range(g * num_generations, (g + 1) * num_generations)
            where = {j: first * num_generations + k for k, j in enumerate(old)}
            prompts += [batch.prompts[j] for j in old]
            images += [batch.images[j] for j in old]
            rewards += [batch.rewards[j] for j in old]
            fallbacks += [batch.fallbacks[j] for j in old]
            for name, values in batch.reward_terms.items():
                terms.setdefault(name, []).extend(values[j] for j in old)
            steps = batch.trace.meta.get("sample_steps")
            if steps is not None:
                sample_steps += [list(steps[j]) for j in old]
            entries += [replace(e, sample_index=where[e.sample_index]) for e in batch.trace.entries
                        if e.sample_index in where]
            actions += [replace(a, trajectory=where[a.trajectory], group=first) for a in batch.actions
                        if a.trajectory in where]
    meta = dict(parts[0][0].trace.meta) if parts else {}
    meta.pop("sample_steps", None)
    if sample_steps:
        meta["sample_steps"] = sample_steps
    trace = Trace(original_prompts=list(prompts), entries=entries, meta=meta)
    return RolloutBatch(prompts, images, trace, actions, terms, rewards, fallbacks, timings)


def actions_from_trace(trace: Trace, num_generations: int) -> list[ActionRecord]:
    """One record per policy generation with tokens and messages (:meth:`Trace.generations`: a
    plan counts once, at its first line)."""
    actions = []
    for entry in trace.generations():
        if not entry.token_ids or entry.logprobs is None or entry.messages is None:
            continue  # errors, timeouts, function policies: nothing to train on
        actions.append(ActionRecord(
            trajectory=entry.sample_index, group=entry.sample_index // num_generations, step=entry.step,
            conversation=entry.messages, token_ids=list(entry.token_ids), old_logprobs=list(entry.logprobs),
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
    """Sample ``num_generations`` trajectories per prompt and score them.

    ``seed`` fixes the initial latents (sample ``j`` from noise seed ``image_seed(seed, j)``, see
    :mod:`promptloop.rollout`) and a random schedule's draws; ``sampling`` decodes every policy
    call of the rollout (passed per call to a :class:`~promptloop.policies.base.GenerativePolicy`;
    default: the policy's own); ``share_noise``: the rollouts of prompt ``g`` start from the same
    latents (noise seed ``image_seed(seed, g)``) and refine at the same steps (a random schedule
    draws once per group), so they differ only by the policy's own choices. Returns the batch
    with one record per policy action.
    """
    per_sample = [p for p in prompts for _ in range(num_generations)]
    noise = [image_seed(seed, j // num_generations if share_noise else j) for j in range(len(per_sample))]
    start = time.perf_counter()
    images, trace = sample(
        pipeline, per_sample, noise, policy=policy, schedule=schedule, mode=mode, preview=preview,
        preview_size=preview_size, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        height=height, width=width, timeout_s=None, keep_previews=False, sampling=sampling,
        schedule_seed=int(seed), group_size=num_generations if share_noise else 1,
    )
    sampling_s = time.perf_counter() - start
    policy_s = float(trace.meta.get("policy_s", 0.0))
    preview_s, encode_s = float(trace.meta.get("preview_s", 0.0)), float(trace.meta.get("encode_s", 0.0))
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
        "time/rollout_policy_s": policy_s,
        "time/rollout_preview_s": preview_s,
        "time/rollout_encode_s": encode_s,
        "time/rollout_diffusion_s": max(0.0, sampling_s - policy_s - preview_s - encode_s),
        "time/reward_s": reward_s,
    }
    return RolloutBatch(per_sample, list(images), trace, actions, terms, rewards, fallbacks, timings)
