"""Segment-by-segment sampling around a :class:`~promptloop.loop.RefineLoop` (no ComfyUI needed).

ComfyUI's samplers run a whole range of steps in one call with one conditioning; the only place
where the conditioning can change is *between* calls, as when two ``KSamplerAdvanced`` nodes are
chained with ``start_at_step`` / ``end_at_step``. So the PromptLoop sampler splits the trajectory
into half-open segments of constant prompt: it samples one segment, calls the loop at the
boundary (the step that just finished), re-encodes the prompts that changed, and samples the
next segment from the latent the previous one left, with the same noise schedule.

Where the boundaries are depends on the mode:

* ``sync`` and ``ahead``: after every refinement step of the schedule.
* ``async`` with a delay ``d``: after every refinement step ``k`` (the request, which does not
  wait) and after ``k + d`` (where the answer is applied, waiting for it if needed).
* ``async`` on arrival (no delay): after every refinement step, and then after *every* step while
  an answer is pending, so that it takes effect right after the first step at which it has
  arrived.

This module holds that logic and nothing ComfyUI-specific, so that CI tests it with fakes; the
ComfyUI side (noise, sigmas, ``comfy.sample.sample``, previews, CLIP) is in ``comfy_backend.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from promptloop.schedule import segments as schedule_segments
from promptloop.trace import step_label

__all__ = [
    "ASYNC_ON_ARRIVAL",
    "SegmentBackend",
    "SegmentRecord",
    "SegmentedRun",
    "fallback_warnings",
    "fixed_boundaries",
    "has_pending",
    "run_segmented",
]

logger = logging.getLogger("promptloop")

ASYNC_ON_ARRIVAL = -1  # the sampler node's ``async_delay`` value meaning "apply when it arrives"


class SegmentBackend(Protocol):
    """What :func:`run_segmented` needs from a sampler (ComfyUI's, or a fake in tests)."""

    def run(self, start: int, end: int, positive: Any) -> None:
        """Sample steps ``start .. end - 1`` with conditioning ``positive``, continuing from
        where the previous call stopped (the first call starts from the noise)."""

    def previews(self) -> Sequence[Any]:
        """One preview image per sample of the x0 prediction at the last step run."""

    def timestep(self, step: int) -> float | None:
        """The timestep (or sigma) of denoising step ``step``, for the trace."""


@dataclass
class SegmentRecord:
    """One sampler call: steps ``start .. end - 1`` with the prompts then in force."""

    start: int
    end: int
    prompts: list[str]
    seconds: float = 0.0


@dataclass
class SegmentedRun:
    """What happened in one segmented sampling run (besides the loop's trace)."""

    segments: list[SegmentRecord] = field(default_factory=list)
    encodes: list[tuple[int, list[str]]] = field(default_factory=list)  # (after step, prompts); -1 = initial
    final_prompts: list[str] = field(default_factory=list)
    positive: Any = None  # the conditioning of the last segment
    policy_s: float = 0.0
    encode_s: float = 0.0
    sample_s: float = 0.0

    @property
    def boundaries(self) -> list[int]:
        """Steps after which the sampler stopped and the loop was consulted."""
        return [s.end - 1 for s in self.segments[:-1]]


def fixed_boundaries(
    mode: str, refine_steps: Sequence[int], num_steps: int, async_delay: int | None = None
) -> list[int]:
    """Steps after which the sampler must stop, known before sampling starts.

    Steps are 0-based; a boundary ``k`` means the segment ends after step ``k`` and the next one
    starts at ``k + 1``. The last step is never a boundary.
    """
    last = num_steps - 2
    steps = {int(s) for s in refine_steps if 0 <= int(s) <= last}
    if mode == "async" and async_delay is not None and async_delay >= 0:
        steps |= {s + async_delay for s in list(steps) if s + async_delay <= last}
    return sorted(steps)


def has_pending(loop: Any) -> bool:
    """Whether an async request of ``loop`` has not been applied or dropped yet."""
    for name in ("has_pending", "pending"):
        value = getattr(loop, name, None)
        if value is None:
            continue
        value = value() if callable(value) else value
        return bool(value if isinstance(value, bool) else len(value) if hasattr(value, "__len__") else value)
    return bool(getattr(loop, "_pending", ()))


def _planned(loop: Any) -> set[int]:
    planned = getattr(loop, "planned_apply_steps", None)
    if callable(planned):
        try:
            return {int(s) for s in planned() or ()}
        except Exception:  # noqa: BLE001 - an optional hint only
            return set()
    return set()


def run_segmented(
    loop: Any,
    prompts: Sequence[str],
    num_steps: int,
    backend: SegmentBackend,
    encode: Callable[[list[str]], Any],
    *,
    async_delay: int | None = None,
    check_interrupt: Callable[[], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[Any, SegmentedRun]:
    """Sample ``num_steps`` steps for ``prompts`` in segments, refining at the boundaries.

    ``loop`` is a :class:`~promptloop.loop.RefineLoop` (its mode decides the boundaries),
    ``encode(prompts) -> conditioning`` turns per-sample prompts into what ``backend.run``
    takes. ``async_delay`` is the loop's delay (``None``: apply answers when they arrive).
    Returns ``(trace, run)``; the loop is finished (worker threads stopped) even when sampling
    raises, e.g. on a user interrupt.
    """
    check = check_interrupt or (lambda: None)
    run = SegmentedRun()
    schedule = getattr(loop, "schedule", None)
    notes = list(schedule.warnings(num_steps)) if hasattr(schedule, "warnings") else []
    for note in notes:
        logger.warning("PromptLoop Sampler: %s", note)
    loop.start(list(prompts), num_steps, meta=meta)
    try:
        current = list(prompts)
        t0 = time.perf_counter()
        positive = encode(list(current))
        run.encode_s += time.perf_counter() - t0
        run.encodes.append((-1, list(current)))
        mode = getattr(loop, "mode", "sync")
        refine_steps = list(getattr(loop, "refine_steps", []) or [])
        boundaries = set(fixed_boundaries(mode, refine_steps, num_steps, async_delay)) | {
            s for s in _planned(loop) if 0 <= s <= num_steps - 2
        }
        on_arrival = mode == "async" and (async_delay is None or async_delay < 0)
        step = 0
        while step < num_steps:
            check()
            if on_arrival and has_pending(loop):
                end_step = step  # one step at a time until the answer has been applied
            else:
                end_step = min([b for b in boundaries if b >= step] + [num_steps - 1])
            t0 = time.perf_counter()
            backend.run(step, end_step + 1, positive)
            dt = time.perf_counter() - t0
            run.sample_s += dt
            run.segments.append(SegmentRecord(step, end_step + 1, list(current), dt))
            step = end_step + 1
            if step >= num_steps:
                break
            check()
            t0 = time.perf_counter()
            changes = loop.at_step(end_step, backend.timestep(end_step), backend.previews)
            run.policy_s += time.perf_counter() - t0
            check()
            if changes:
                for i, text in dict(changes).items():
                    current[int(i)] = text
                t0 = time.perf_counter()
                positive = encode(list(current))
                run.encode_s += time.perf_counter() - t0
                run.encodes.append((end_step, list(current)))
    finally:
        trace = loop.finish()
    run.final_prompts = list(current)
    run.positive = positive
    trace.meta.update(
        segments=[[s.start, s.end] for s in run.segments],
        reencoded_after_steps=[s for s, _ in run.encodes if s >= 0],
        policy_s=round(run.policy_s, 4),
        encode_s=round(run.encode_s, 4),
        sample_s=round(run.sample_s, 4),
    )
    if notes:
        trace.meta["warnings"] = notes
    for line in fallback_warnings(trace):
        logger.warning("PromptLoop Sampler: %s", line)
    return trace, run


def fallback_warnings(trace: Any) -> list[str]:
    """One sentence per distinct reason a refinement was not used (for the ComfyUI console).

    Policy failures never break a generation, so without this they would show only in the
    trace: a remote policy that cannot connect, a missing dependency, a time-out.
    """
    groups: dict[tuple[str, str], list[Any]] = {}
    for entry in trace.entries:
        if entry.fallback is not None:
            groups.setdefault((entry.fallback, entry.error or ""), []).append(entry)
    lines = []
    for (reason, error), entries in groups.items():
        steps = sorted({e.step for e in entries})
        samples = sorted({e.sample_index for e in entries})
        where = ", ".join(step_label(s, entries[0].num_steps) for s in steps)
        who = f"sample {samples[0]}" if len(samples) == 1 else f"samples {', '.join(map(str, samples))}"
        lines.append(f"the policy's answer was not used at {where} ({who}): {reason}"
                     f"{': ' + error if error else ''}; the prompt was kept")
    return lines


def expected_segments(refine_steps: Sequence[int], num_steps: int) -> list[tuple[int, int]]:
    """The segments of a sync/ahead run (the library's :func:`promptloop.schedule.segments`)."""
    return schedule_segments(list(refine_steps), num_steps)
