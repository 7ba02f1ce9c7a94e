"""The GRPO objective on token log-probs, as TRL computes it.

* advantages: each reward minus its group's mean (the ``G`` rollouts of one prompt), divided
  by the group's (or the batch's) standard deviation when ``scale_rewards`` asks for it;
* the PPO-clipped ratio ``exp(logp - old_logp)`` per token, clipped to
  ``[1 - epsilon, 1 + epsilon_high]``;
* the k3 estimator of KL to the reference policy, ``exp(ref - logp) - (ref - logp) - 1``;
* three ways to reduce tokens to a loss (``loss_type``): ``grpo`` averages each sequence's
  tokens and then the sequences; ``dr_grpo`` sums tokens and divides by
  ``sequences x max_completion_length``; ``dapo`` sums tokens and divides by the number of
  active tokens in the batch.

Micro-batches: pass the whole batch's ``num_sequences`` / ``num_tokens``; the micro-batch losses
then add up to the full-batch loss, so gradient accumulation is exact.

Rejection-sampling fine-tuning (``loss_type: raft``, RAFT / ReST): :func:`best_of_group` picks
each group's best rollout (if it beats the group's others by more than a tolerance) and
:func:`raft_loss` is the mean token NLL of its actions (+ ``beta`` x k3 KL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
#: Objectives that are not a policy gradient.
SUPERVISED_LOSS_TYPES = ("raft",)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """``(N,)`` rewards, consecutive groups of ``num_generations`` -> ``(N,)`` advantages.

    ``scale_rewards``: ``"group"`` divides by each group's std, ``"batch"`` by the batch's std,
    ``"none"`` only centres (Dr. GRPO).
    """
    rewards = rewards.float()
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    mean = grouped.mean(dim=1, keepdim=True)
    advantages = grouped - mean
    if scale_rewards == "group":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        advantages = advantages / (rewards.std() + eps)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, not {scale_rewards!r}")
    return advantages.reshape(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): ``exp(d) - d - 1``, ``d = ref - logp``."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


@dataclass
class LossStats:
    """Detached diagnostics of one loss evaluation (means over active tokens)."""

    kl: float
    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio: float
    ratio_mean: float


def _with_kl(per_token: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor | None,
             beta: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``per_token`` + ``beta`` x k3 KL to the reference, and the KL (``None`` when ``beta`` is 0)."""
    if beta == 0.0:
        return per_token, None
    if ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps")
    kl = k3_kl(logps, ref_logps)
    return per_token + beta * kl, kl


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Clipped token-level policy-gradient loss (+ ``beta`` x k3 KL).

    Args:
        logps: ``(B, T)`` log-probs of the completion tokens under the current policy (with grad).
        old_logps: ``(B, T)`` log-probs under the policy that sampled them.
        advantages: ``(B,)`` one advantage per sequence, shared by its tokens.
        mask: ``(B, T)`` 1 for completion tokens, 0 for padding.
        ref_logps: ``(B, T)`` reference log-probs; needed when ``beta != 0``.
        num_sequences / num_tokens: size of the whole batch when this is a micro-batch.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {loss_type!r}")
    high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype)[:, None]
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high)
    per_token, kl = _with_kl(-torch.min(ratio * adv, clipped * adv), logps, ref_logps, beta)

    batch = num_sequences or logps.shape[0]
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).sum() / batch
    elif loss_type == "dr_grpo":
        length = max_completion_length or logps.shape[1]
        loss = (per_token * mask).sum() / (batch * length)
    else:
        tokens = num_tokens if num_tokens is not None else mask.sum().clamp(min=1.0)
        loss = (per_token * mask).sum() / tokens

    with torch.no_grad():
        active = mask.sum().clamp(min=1.0)
        low_clip = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype) * mask
        high_clip = ((ratio > 1 + high) & (adv > 0)).to(mask.dtype) * mask
        if ref_logps is not None and kl is None:
            kl = k3_kl(logps, ref_logps)
        stats = LossStats(
            kl=float((kl * mask).sum() / active) if kl is not None else 0.0,
            clip_ratio_low=float(low_clip.sum() / active),
            clip_ratio_high=float(high_clip.sum() / active),
            clip_ratio=float((low_clip + high_clip).sum() / active),
            ratio_mean=float((ratio * mask).sum() / active),
        )
    return loss, stats


def best_of_group(rewards: torch.Tensor, num_generations: int, tol: float = 0.0) -> list[int]:
    """Indices (into ``rewards``) of each group's best rollout, for the groups whose best reward
    exceeds every other member's by more than ``tol`` (a tie has no best)."""
    grouped = rewards.float().view(-1, num_generations)
    best = []
    for g, row in enumerate(grouped):
        top = int(torch.argmax(row))
        others = torch.cat([row[:top], row[top + 1:]])
        if float(row[top] - others.max()) > tol:
            best.append(g * num_generations + top)
    return best


def raft_loss(
    logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Mean token NLL of supervised targets (+ ``beta`` x k3 KL): ``-sum(logp * mask) / tokens``,
    ``tokens`` the whole batch's target tokens (``num_tokens``, for micro-batches) or ``mask``'s."""
    mask = mask.to(logps.dtype)
    per_token, kl = _with_kl(-logps, logps, ref_logps, beta)
    tokens = num_tokens if num_tokens is not None else mask.sum().clamp(min=1.0)
    loss = (per_token * mask).sum() / tokens
    with torch.no_grad():
        active = mask.sum().clamp(min=1.0)
        if ref_logps is not None and kl is None:
            kl = k3_kl(logps, ref_logps)
        stats = LossStats(kl=float((kl * mask).sum() / active) if kl is not None else 0.0,
                          clip_ratio_low=0.0, clip_ratio_high=0.0, clip_ratio=0.0, ratio_mean=1.0)
    return loss, stats
