"""A replay buffer of prompts the policy got wrong (``replay_fraction``, ``replay_threshold``).

After each step, every prompt whose group mean reward was below the threshold enters the buffer
(or moves to its end), and a prompt whose group reached it leaves; the oldest leave first when it
is full. Each step then draws ``round(replay_fraction x per_device_prompts)`` of its prompts from
the buffer, at random but as a fixed function of (seed, step, process) and the buffer's contents,
which checkpoints save (``replay_{process}.json``), so a resumed run draws the same prompts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path


class ReplayBuffer:
    """Prompts whose group mean reward was below ``threshold``, oldest first."""

    def __init__(self, capacity: int, threshold: float) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.threshold = float(threshold)
        self.prompts: list[str] = []

    def __len__(self) -> int:
        return len(self.prompts)

    def update(self, results: Iterable[tuple[str, float]]) -> None:
        """``(prompt, group mean reward)`` pairs of a step: below the threshold in (at the end),
        at or above it out."""
        for prompt, mean in results:
            if prompt in self.prompts:
                self.prompts.remove(prompt)
            if mean < self.threshold:
                self.prompts.append(prompt)
        del self.prompts[:max(0, len(self.prompts) - self.capacity)]

    def draw(self, count: int, seed: int) -> list[str]:
        """Up to ``count`` distinct prompts, chosen by ``random.Random(seed)``."""
        count = min(int(count), len(self.prompts))
        return random.Random(seed).sample(self.prompts, count) if count > 0 else []

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "threshold": self.threshold, "prompts": list(self.prompts)}

    def load_state_dict(self, state: dict) -> None:
        self.prompts = [str(p) for p in state["prompts"]][-self.capacity:]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict(), indent=1))

    def load(self, path: str | Path) -> None:
        self.load_state_dict(json.loads(Path(path).read_text()))


__all__ = ["ReplayBuffer"]
