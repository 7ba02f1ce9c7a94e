"""Credit per refinement (``credit: refinement``): each group explores one refinement.

The G rollouts of a group share their noise and refinement steps (``share_noise``); every
refinement is decoded greedily except the group's explored one, sampled at the training
temperature. So the members hold identical latents up to the explored step (deterministic
sampler, identical greedy prefix) and differ only in that refinement's text and what follows from
it; the group's advantage is then credit for that one refinement, and only its action is trained.
Which refinement a group explores cycles with the group's index and an offset (the step):
``(group + offset) % num_refinements``.

:class:`ExploringPolicy` does this as a wrapper the loop calls like the policy: the loop batches
one ``refine`` call over every sample due at a step, and the wrapper splits it into the explored
samples (decoded with ``explore``) and the others (``greedy``). A group's members are due
together, so they fall in the same sub-call and decode as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptloop.policies.base import SamplingConfig
from promptloop.refinement import Observation, Refinement


class ExploringPolicy:
    """``policy`` with one explored refinement per group of ``num_generations`` samples; use one
    per rollout (it counts each sample's refinements).

    Attributes:
        explored: ``(sample index, step)`` of every explored refinement so far.
    """

    def __init__(self, policy: Any, *, num_generations: int, num_refinements: int, offset: int,
                 explore: SamplingConfig, greedy: SamplingConfig) -> None:
        if num_refinements < 1:
            raise ValueError("credit per refinement needs a schedule with at least one refinement")
        self.policy = policy
        self.num_generations = int(num_generations)
        self.num_refinements = int(num_refinements)
        self.offset = int(offset)
        self.explore, self.greedy = explore, greedy
        self.explored: set[tuple[int, int]] = set()
        self._counts: dict[int, int] = {}

    def explored_refinement(self, group: int) -> int:
        """Which refinement (0-based, in the sample's order) group ``group`` explores."""
        return (group + self.offset) % self.num_refinements

    def refine(self, observations: Sequence[Observation], *, sampling: SamplingConfig | None = None,
               **options: Any) -> list[Refinement]:
        """One refinement per observation; ``sampling`` is ignored (``explore`` / ``greedy`` decide)."""
        chosen: dict[bool, list[int]] = {True: [], False: []}
        for k, obs in enumerate(observations):
            i = obs.sample_index
            n = self._counts.get(i, 0)
            self._counts[i] = n + 1
            explore = n == self.explored_refinement(i // self.num_generations)
            chosen[explore].append(k)
            if explore:
                self.explored.add((i, obs.step))
        out: list[Refinement | None] = [None] * len(observations)
        for explore, indices in chosen.items():
            if indices:
                part = self.policy.refine([observations[k] for k in indices],
                                          sampling=self.explore if explore else self.greedy, **options)
                for k, ref in zip(indices, part):
                    out[k] = ref
        return out  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:  # max_prompt_chars, ... of the wrapped policy
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)


__all__ = ["ExploringPolicy"]
