"""Refine schedules: at which denoising steps the policy rewrites the prompt.

A schedule is given as step indices (``[5, 10, 15]``), fractions of the trajectory
(``[0.2, 0.4, 0.6]``), a count of equally spaced refinements (``RefineSchedule.evenly(5)``) or a
string from the command line (``"5,10,15"``, ``"0.2,0.4"``, ``"every:5"``, ``"evenly:3"``).
It is resolved against the number of steps of one sampling run into sorted, unique step
indices. Refining "at step k" means: after denoising step ``k`` (0-based) has finished, the
policy sees its preview and the new prompt conditions steps ``k + 1 .. N - 1``. Step ``N - 1``
is never a refinement step (nothing would follow it).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# What every "bad schedule" error lists: all the forms parse() accepts.
SCHEDULE_FORMS = ("use step indices '5,10', fractions '0.2,0.5', 'evenly:5', 'every:4', 'random:5', "
                  "or 'none' for no refinement")


@dataclass(frozen=True)
class RefineSchedule:
    """Where to refine, independent of the number of steps until :meth:`resolve` is called."""

    steps: tuple[int, ...] = ()
    fractions: tuple[float, ...] = ()
    count: int = 0  # equally spaced refinements (the paper's inference setting)
    every: int = 0  # a refinement every ``every`` steps
    random_count: int = 0  # refinements at random steps (the paper's training setting)
    group_size: int = 1  # random schedules: consecutive samples that share one draw (a GRPO group)
    seed: int | None = field(default=None, compare=False)
    spec: str | None = field(default=None, compare=False)  # the text it was parsed from, for messages

    def __post_init__(self) -> None:
        if any(s < 0 for s in self.steps):
            raise ValueError(f"schedule steps must be >= 0, got {list(self.steps)}")
        if any(not 0.0 <= f < 1.0 for f in self.fractions):
            raise ValueError(f"schedule fractions must be in [0, 1), got {list(self.fractions)}")
        if min(self.count, self.every, self.random_count) < 0:
            raise ValueError("count, every and random_count must be >= 0")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def none(cls) -> RefineSchedule:
        return cls()

    @classmethod
    def at_steps(cls, steps: Iterable[int]) -> RefineSchedule:
        return cls(steps=tuple(int(s) for s in steps))

    @classmethod
    def at_fractions(cls, fractions: Iterable[float]) -> RefineSchedule:
        return cls(fractions=tuple(float(f) for f in fractions))

    @classmethod
    def evenly(cls, count: int) -> RefineSchedule:
        return cls(count=int(count))

    @classmethod
    def random(cls, count: int, seed: int | None = None) -> RefineSchedule:
        return cls(random_count=int(count), seed=seed)

    @classmethod
    def parse(cls, spec: str | Sequence[int | float] | RefineSchedule | None) -> RefineSchedule:
        """Build a schedule from what a user typed or passed.

        Accepted: ``None``/``""``/``"none"``; a list of ints (steps) or floats (fractions);
        ``"3,6,9"``; ``"0.2,0.5"``; ``"every:4"``; ``"evenly:5"`` (or ``"5x"``); ``"random:5"``.
        """
        if spec is None or isinstance(spec, RefineSchedule):
            return spec or cls()
        if not isinstance(spec, str):
            values = list(spec)
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                return cls.at_steps(values)
            return cls.at_fractions(float(v) for v in values)
        text = spec.strip().lower()
        if text in ("", "none", "off"):
            return cls()
        if ":" in text:
            kind, _, arg = text.partition(":")
            try:
                number = int(arg)
            except ValueError:
                raise ValueError(f"bad schedule {spec!r}: {kind}: needs an integer; {SCHEDULE_FORMS}") from None
            if kind == "every":
                return cls(every=number, spec=spec)
            if kind in ("evenly", "even", "count"):
                return cls(count=number, spec=spec)
            if kind == "random":
                return cls(random_count=number, spec=spec)
            raise ValueError(f"bad schedule {spec!r}: unknown kind {kind!r}; {SCHEDULE_FORMS}")
        if text.endswith("x") and text[:-1].isdigit():
            return cls(count=int(text[:-1]), spec=spec)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            if all(p.isdigit() for p in parts):
                return cls(steps=tuple(int(p) for p in parts), spec=spec)
            return cls(fractions=tuple(float(p) for p in parts), spec=spec)
        except ValueError:
            raise ValueError(f"bad schedule {spec!r}: {SCHEDULE_FORMS}") from None

    # -- resolution -----------------------------------------------------------------------
    def resolve(self, num_steps: int) -> list[int]:
        """Sorted unique step indices in ``[0, num_steps - 2]`` for a run of ``num_steps`` steps."""
        if num_steps < 2:
            return []
        last = num_steps - 2  # refining after the final step would change nothing
        chosen: set[int] = {s for s in self.steps if s <= last}
        for f in self.fractions:
            chosen.add(min(last, round(f * num_steps)))
        if self.count:
            # Equally spaced over the trajectory: k/(count+1) of the way, k = 1..count.
            for k in range(1, self.count + 1):
                chosen.add(min(last, max(0, round(k * num_steps / (self.count + 1)) - 1)))
        if self.every:
            chosen.update(range(self.every - 1, last + 1, self.every))
        if self.random_count:
            rng = random.Random(self.seed)
            pool = list(range(last + 1))
            chosen.update(rng.sample(pool, min(self.random_count, len(pool))))
        return sorted(chosen)

    @property
    def per_sample(self) -> bool:
        """True when samples draw their own steps (random schedules)."""
        return bool(self.random_count)

    def resolve_samples(self, num_steps: int, num_samples: int) -> list[list[int]]:
        """Step indices per sample for one run of ``num_samples`` samples.

        Fixed schedules give every sample the same steps. Random schedules draw each sample's
        own steps (the ``G`` rollouts of one prompt in one batched call refine at different
        steps), from ``random.Random(seed)`` in sample order (fresh entropy without a seed); with
        ``group_size`` g, each run of g consecutive samples shares one draw.
        """
        if not self.random_count:
            steps = self.resolve(num_steps)
            return [list(steps) for _ in range(num_samples)]
        rng = random.Random(self.seed)
        fixed = RefineSchedule(self.steps, self.fractions, self.count, self.every).resolve(num_steps)
        last = num_steps - 2
        out: list[list[int]] = []
        for index in range(num_samples):
            if index % self.group_size:
                out.append(list(out[-1]))
                continue
            chosen = set(fixed)
            if last >= 0:
                pool = list(range(last + 1))
                chosen.update(rng.sample(pool, min(self.random_count, len(pool))))
            out.append(sorted(chosen))
        return out

    def warnings(self, num_steps: int) -> list[str]:
        """What this schedule asks for that a run of ``num_steps`` steps cannot do, in words.

        Empty when every requested refinement happens. Otherwise one sentence per problem: step
        indices past the last refinement step (steps are 0-based; ``N - 2`` is the last that can
        refine), a schedule that resolves to no step, more refinements asked for than the run
        has steps, or a count of zero (``"evenly:0"``; ``"none"`` is the way to turn refinement off).
        """
        name = repr(self.spec) if self.spec else "the schedule"
        num_steps = int(num_steps)
        last = num_steps - 2
        where = (f"a {num_steps}-step run can refine after steps 0-{last} (steps count from 0)" if last >= 0
                 else f"a {num_steps}-step run has no step to refine at (nothing follows the last step)")
        if not self:
            if self.spec and self.spec.strip().lower() not in ("", "none", "off"):
                return [f"schedule {name} asks for no refinement ({where}); write 'none' to turn refinement off"]
            return []
        if last < 0:
            return [f"schedule {name}: {where}"]
        out = []
        late = sorted({s for s in self.steps if s > last})
        if late:
            out.append(f"schedule {name}: step{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} "
                       f"never refine{'' if len(late) > 1 else 's'}: {where}")
        resolved = self.resolve(num_steps)
        if not resolved:
            if not late:
                out.append(f"schedule {name} refines at no step: {where}")
            return out
        asked = max(self.count, self.random_count)
        if asked > last + 1:
            out.append(f"schedule {name} asks for {asked} refinements; {where}, so it makes {len(resolved)}")
        fraction_steps = {min(last, round(f * num_steps)) for f in self.fractions}
        if len(fraction_steps) < len(set(self.fractions)):
            out.append(f"schedule {name}: some fractions fall on the same step of a {num_steps}-step run "
                       f"(steps {', '.join(map(str, sorted(fraction_steps)))})")
        return out

    def __bool__(self) -> bool:
        return bool(self.steps or self.fractions or self.count or self.every or self.random_count)


def segments(refine_steps: Sequence[int], num_steps: int) -> list[tuple[int, int]]:
    """Split ``range(num_steps)`` into half-open ``(start, end)`` segments of constant prompt.

    Segment ``j`` ends right after refinement step ``refine_steps[j]``; the last one ends at
    ``num_steps``. Samplers that run one segment at a time (ComfyUI) use this.

    >>> segments([2, 5], 8)
    [(0, 3), (3, 6), (6, 8)]
    """
    bounds = [0] + [s + 1 for s in sorted(set(refine_steps)) if 0 <= s < num_steps - 1] + [num_steps]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
