"""DAPO's dynamic sampling: keep only the groups whose rewards differ (``dynamic_sampling``).

A group whose G rewards are all equal (std below ``reward_tol``) has zero advantages and teaches
nothing. :func:`collect_groups` drops such groups and rolls out fresh prompts in their place, one
round at a time, until the step holds as many groups with a spread as it started with or
``max_resample_batches`` extra rounds are spent. The fresh prompts of round ``r`` are a fixed
function of (seed, step, process, r) (:func:`fresh_prompts`, distinct from the step's other
prompts), so the base data order is unchanged and a resumed run rolls out the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from promptloop.training.rollouts import RolloutBatch


def has_spread(rewards: Sequence[float], tol: float) -> bool:
    """Whether a group's rewards differ: their (unbiased) std is at least ``tol`` and above 0."""
    values = torch.tensor(list(rewards), dtype=torch.float64)
    std = float(values.std()) if values.numel() > 1 else 0.0
    return std > 0.0 and std >= tol


def spread_groups(rewards: Sequence[float], num_generations: int, tol: float) -> list[int]:
    """Indices of the groups (consecutive runs of ``num_generations``) with a reward spread."""
    n = len(rewards) // num_generations
    return [g for g in range(n) if has_spread(rewards[g * num_generations:(g + 1) * num_generations], tol)]


def fresh_prompts(prompts: Sequence[str], count: int, seed: int, exclude: Sequence[str] = ()) -> list[str]:
    """``count`` prompts in the order of ``random.Random(seed)``'s permutation, those in
    ``exclude`` last (they come back only when the list holds too few others)."""
    order = random.Random(seed).sample(range(len(prompts)), len(prompts))
    skip = set(exclude)
    ranked = [prompts[i] for i in order if prompts[i] not in skip] + [prompts[i] for i in order if prompts[i] in skip]
    return [ranked[k % len(ranked)] for k in range(count)] if ranked else []


@dataclass
class Collected:
    """What one step rolled out: every batch, the groups kept of each, and the counts."""

    parts: list[tuple[RolloutBatch, list[int]]] = field(default_factory=list)  # (batch, groups kept)
    groups_resampled: int = 0  # groups rolled out after the first round
    rounds: int = 0

    @property
    def groups_kept(self) -> int:
        return sum(len(kept) for _, kept in self.parts)

    @property
    def images(self) -> int:
        return sum(batch.num_trajectories for batch, _ in self.parts)


def collect_groups(
    roll: Callable[[list[str], int], RolloutBatch],
    prompts: Sequence[str],
    *,
    rewards: Callable[[RolloutBatch], list[float]],
    num_generations: int,
    tol: float,
    max_resample_batches: int,
    fresh: Callable[[int, int, list[str]], list[str]],
) -> Collected:
    """Roll out ``prompts`` (``roll(prompts, round)``), keep the groups with a spread of
    ``rewards(batch)``, and roll out ``fresh(round, count, prompts seen)`` for the missing ones,
    for at most ``max_resample_batches`` more rounds; the kept groups are capped at
    ``len(prompts)`` (the latest round's extras dropped, as in DAPO)."""
    target = len(prompts)
    out = Collected()
    batch_prompts, seen = list(prompts), list(prompts)
    for r in range(max_resample_batches + 1):
        batch = roll(batch_prompts, r)
        kept = spread_groups(rewards(batch), num_generations, tol)[:target - out.groups_kept]
        out.parts.append((batch, kept))
        out.rounds = r + 1
        if r:
            out.groups_resampled += len(batch_prompts)
        missing = target - out.groups_kept
        if missing <= 0 or r == max_resample_batches:
            break
        batch_prompts = fresh(r + 1, missing, seen)
        seen += batch_prompts
    return out


__all__ = ["Collected", "collect_groups", "fresh_prompts", "has_spread", "spread_groups"]
