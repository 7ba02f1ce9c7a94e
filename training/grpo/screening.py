"""Offline difficulty filtering: train on the prompts the starting policy gets wrong (``screen_prompts``).

On a well-started policy most prompts teach nothing: its rewrites are already right, a group's
rewards tie and its advantages are zero (ShapesWorld C: about half the groups, docs/training.md).
Before the first step, :func:`screen` rolls out the starting policy once per prompt, greedily, at
the evaluation's schedule, and keeps the prompts whose (penalised) reward is below a threshold; the
run then trains on those only. This is the offline pass-rate filter of RL recipes for reasoning
models (drop what the start already solves), done with the reward the run trains on, on training
prompts only. The result is written to ``OUTPUT_DIR/screened_prompts.json`` (every prompt screened,
its reward and whether it was kept), so a resumed run reads it instead of screening again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The file in the output folder holding a run's screening.
SCREEN_FILE = "screened_prompts.json"


@dataclass
class Screening:
    """Every screened prompt with its reward, and the threshold that kept the ones below it."""

    prompts: list[str]
    rewards: list[float]
    threshold: float

    @property
    def kept(self) -> list[str]:
        """The prompts whose reward is below the threshold, in screening order."""
        return [p for p, r in zip(self.prompts, self.rewards, strict=True) if r < self.threshold]

    def save(self, path: str | Path) -> None:
        rows = [{"prompt": p, "reward": r, "kept": r < self.threshold}
                for p, r in zip(self.prompts, self.rewards, strict=True)]
        Path(path).write_text(json.dumps({"threshold": self.threshold, "prompts": rows}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Screening:
        data = json.loads(Path(path).read_text())
        rows = data["prompts"]
        return cls([r["prompt"] for r in rows], [float(r["reward"]) for r in rows], float(data["threshold"]))


def screen(prompts: Sequence[str], rewards: Callable[[list[str], int], list[float]], threshold: float,
           batch_size: int = 16) -> Screening:
    """Score ``prompts`` in batches (``rewards(batch, index of its first prompt)``, one reward per
    prompt) and return the :class:`Screening` that keeps those below ``threshold``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        values = rewards(batch, start)
        if len(values) != len(batch):
            raise ValueError(f"rewards returned {len(values)} values for {len(batch)} prompts")
        scores.extend(float(v) for v in values)
    return Screening(list(prompts), scores, float(threshold))


__all__ = ["SCREEN_FILE", "Screening", "screen"]
