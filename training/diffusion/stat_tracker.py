"""Per-prompt reward statistics that turn rewards into advantages.

* :class:`PerPromptStatTracker` is DDPO's (ddpo-pytorch's): a buffer of the last ``buffer_size``
  rewards per prompt; once it holds ``min_count`` of them the prompt's rewards are normalised with
  its own mean and std, before that with the whole batch's.
* :class:`StageHistory` is B²-DiffuRL's: rewards of the current stage are z-scored per prompt
  against the current stage plus the last ``history`` stages.

Both carry their state in :meth:`state_dict` so that a resumed run continues exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np


class PerPromptStatTracker:
    """DDPO's per-prompt advantage normalisation (buffer with a minimum count, batch fallback)."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16, eps: float = 1e-6) -> None:
        if buffer_size < 1 or min_count < 1:
            raise ValueError("buffer_size and min_count must be >= 1")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.eps = eps
        self.stats: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: Sequence[float]) -> np.ndarray:
        """Add this batch's rewards and return their advantages (same order)."""
        prompts_arr = np.asarray(list(prompts), dtype=object)
        rewards_arr = np.asarray(rewards, dtype=np.float64)
        if len(prompts_arr) != len(rewards_arr):
            raise ValueError(f"{len(prompts_arr)} prompts for {len(rewards_arr)} rewards")
        advantages = np.empty_like(rewards_arr)
        for prompt in dict.fromkeys(prompts_arr.tolist()):  # first-seen order
            mask = prompts_arr == prompt
            buffer = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards_arr[mask].tolist())
            ref = np.asarray(buffer) if len(buffer) >= self.min_count else rewards_arr
            advantages[mask] = (rewards_arr[mask] - ref.mean()) / (ref.std() + self.eps)
        return advantages

    def state_dict(self) -> dict[str, Any]:
        return {"stats": {k: list(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = {k: deque(v, maxlen=self.buffer_size) for k, v in state.get("stats", {}).items()}


class StageHistory:
    """B²-DiffuRL's per-prompt z-scores over the current stage and the last ``history`` stages
    (sample std, as ``torch.std``; ``eps`` added to it)."""

    def __init__(self, history: int = 8, eps: float = 1e-8) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self.history = history
        self.eps = eps
        self.stages: list[dict[str, list[float]]] = []

    def update(self, prompts: Sequence[str], rewards: Sequence[float]) -> np.ndarray:
        """Z-scores of this stage's rewards; then this stage joins the history."""
        current: dict[str, list[float]] = {}
        for p, r in zip(prompts, rewards):
            current.setdefault(p, []).append(float(r))
        past = self.stages[-self.history:] if self.history else []
        stats = {}
        for p, values in current.items():
            pooled = np.asarray([v for stage in past for v in stage.get(p, [])] + values)
            std = pooled.std(ddof=1) if len(pooled) > 1 else 0.0
            stats[p] = (pooled.mean(), std + self.eps)
        if self.history:
            self.stages = (past + [current])[-self.history:]
        return np.asarray([(float(r) - stats[p][0]) / stats[p][1] for p, r in zip(prompts, rewards)])

    def state_dict(self) -> dict[str, Any]:
        return {"stages": self.stages}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stages = [dict(s) for s in state.get("stages", [])]


__all__ = ["PerPromptStatTracker", "StageHistory"]
