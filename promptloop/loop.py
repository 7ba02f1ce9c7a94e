"""The refinement loop, independent of any sampler: who asks the policy what, when, and what
prompt each sample has from then on.

:class:`RefineLoop` is the one rollout engine: the diffusers hook drives it from
``callback_on_step_end``, the ComfyUI sampler drives it at segment boundaries, and the trainers
drive it through the hook. A sampler calls :meth:`RefineLoop.start` once per run,
:meth:`RefineLoop.at_step` after every denoising step (with a way to get previews), applies the
prompt changes it returns to the steps that follow, and calls :meth:`RefineLoop.finish`.

Modes
-----
``sync``   At each refinement step sampling waits for the policy (bounded by ``timeout_s``).
``async``  The policy runs in a background thread on the preview of step ``k`` while sampling
           goes on; its answer is applied after the first step at which it has arrived, or
           exactly ``async_delay`` steps later when that is set (deterministic: sampling waits
           there if needed). Answers that arrive after the last step are recorded, not applied.
           Several requests may be in flight. At every step the loop first applies the answers
           that have arrived (or are due), in request order, and only then takes the step's own
           request, so a request sees the newest prompt in force; an answer still in flight is
           not waited for, and the request is based on the prompt without it. Each answer, when
           it is applied, replaces the prompt in force then. The trace's ``prompt_before`` is
           always the prompt the policy saw.
``ahead``  Before the first step the policy writes the prompts for all refinement steps in one
           batched call, without previews; sampling is never interrupted.

Whatever the policy does (raise, hang, return garbage), the loop records a fallback and the
sample keeps its current prompt: a generation is never broken by the policy. Every refinement,
whichever backend produced it, passes :func:`~promptloop.policies.parsing.prompt_problem` before
it is applied (empty or whitespace, longer than ``max_prompt_chars``, control characters or not a
string: a fallback with that reason in the trace), unless the policy's parser already passed it
with a limit no larger (:func:`~promptloop.policies.parsing.passed_checks`).

The trace records what the policy reported with each refinement: its tokens and log-probs, and
the exact messages it generated from (``Refinement.extra["messages"]``, see
:class:`~promptloop.policies.base.GenerativePolicy`), which trainers score against. The time
spent in the policy's calls is ``trace.meta["policy_s"]``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from promptloop.policies.base import MESSAGES, Policy
from promptloop.policies.parsing import DEFAULT_MAX_PROMPT_CHARS, passed_checks, prompt_problem
from promptloop.refinement import Fallback, Observation, Refinement
from promptloop.schedule import RefineSchedule
from promptloop.trace import Trace, TraceEntry

logger = logging.getLogger("promptloop")

MODES = ("sync", "async", "ahead")
PreviewSource = Callable[[], Sequence[Image.Image | None]] | Sequence[Image.Image | None] | None


def system_prompt_of(messages: Sequence[dict[str, Any]] | None) -> str | None:
    """The text of the system message in ``messages`` (``None`` without one)."""
    for message in messages or ():
        if message.get("role") == "system":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content or () if part.get("type") == "text")
    return None


class _Worker:
    """A daemon thread running submitted calls in order (a hung policy never blocks exit)."""

    def __init__(self, name: str = "promptloop-policy") -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            fn, future = self._queue.get()
            if fn is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - reported through the future
                future.set_exception(exc)

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._queue.put((fn, future))
        return future

    def close(self) -> None:
        self._queue.put((None, None))


def call_with_timeout(fn: Callable[[], Any], timeout_s: float | None) -> Any:
    """Run ``fn``; with a timeout, in a daemon thread. Raises ``TimeoutError`` past the limit."""
    if timeout_s is None:
        return fn()
    worker = _Worker("promptloop-policy-call")
    try:
        return worker.submit(fn).result(timeout=timeout_s)
    except FutureTimeout:
        raise TimeoutError(f"policy did not answer within {timeout_s:g} s") from None
    finally:
        worker.close()


@dataclass
class _AsyncRequest:
    step: int
    observations: list[Observation]
    future: Future
    submitted: float
    due_step: int | None
    previews: list[Image.Image | None] = field(default_factory=list)
    snapshots: list[Observation] = field(default_factory=list)


class RefineLoop:
    """Per-run refinement state for a batch of samples.

    Args:
        policy: anything with ``refine(observations) -> refinements`` (and ``plan`` for ``ahead``).
        schedule: where to refine (see :class:`~promptloop.schedule.RefineSchedule.parse`).
        mode: ``"sync"``, ``"async"`` or ``"ahead"``.
        timeout_s: longest wait for one policy call; ``None`` waits forever.
        async_delay: in async mode, apply each answer exactly this many steps after its request
            (waiting for it there if needed). ``None``: apply at the first step after arrival.
        keep_previews: keep preview images in the trace (turn off for long training runs).
        keep_history: show the policy the sample's earlier prompts.
        max_prompt_chars: longest refined prompt accepted; ``None``: the policy's own
            ``max_prompt_chars`` when it has one, else 600.
        policy_options: keyword arguments for every ``refine``/``plan`` call, e.g.
            ``{"sampling": SamplingConfig(...)}`` to decode this run's calls with other settings
            than the policy's own (a :class:`~promptloop.policies.base.GenerativePolicy`).
    """

    def __init__(
        self,
        policy: Policy,
        schedule: RefineSchedule | str | Sequence[int | float] | None = None,
        *,
        mode: str = "sync",
        timeout_s: float | None = 60.0,
        async_delay: int | None = None,
        keep_previews: bool = True,
        keep_history: bool = True,
        max_prompt_chars: int | None = None,
        policy_options: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if async_delay is not None and async_delay < 0:
            raise ValueError("async_delay must be >= 0")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be > 0 (or None for no limit)")
        self.policy = policy
        self.schedule = RefineSchedule.parse(schedule)
        self.mode = mode
        self.timeout_s = timeout_s
        self.async_delay = async_delay
        self.keep_previews = keep_previews
        self.keep_history = keep_history
        if max_prompt_chars is None:
            max_prompt_chars = getattr(policy, "max_prompt_chars", None) or DEFAULT_MAX_PROMPT_CHARS
        self.max_prompt_chars = int(max_prompt_chars)
        self.policy_options = dict(policy_options or {})
        self.trace = Trace()
        self.refine_steps: list[int] = []
        #: Each sample's own refinement steps (random schedules differ per sample).
        self.sample_steps: list[list[int]] = []
        self.num_steps = 0
        self.current: list[str] = []
        self.policy_calls = 0
        self.policy_seconds = 0.0
        self._history: list[list[str]] = []
        self._pending: deque[_AsyncRequest] = deque()
        self._plan: dict[int, dict[int, Refinement]] = {}
        self._worker: _Worker | None = None
        self._started = False
        #: ``ahead`` plans written by :meth:`prepare`: (prompts, plans, latency, calls, policy seconds).
        self._prepared: tuple[list[str], list[list[Refinement]], float, int, float] | None = None
        self._resolved: tuple[int, int, list[list[int]]] | None = None

    # -- run lifecycle ----------------------------------------------------------------------
    def prepare(self, prompts: Sequence[str], num_steps: int) -> None:
        """``ahead`` mode: write the plan now, before sampling starts (no-op in other modes).

        :meth:`start` then uses it if it is called with the same prompts; if the run turns out
        to have a different number of steps, the planned prompts are used in order.
        """
        self._prepared = None
        sample_steps = self._resolve(len(prompts), int(num_steps))
        self._resolved = (len(prompts), int(num_steps), sample_steps)  # start() uses the same steps
        if self.mode != "ahead":
            return
        if not any(sample_steps) or not prompts:
            return
        self.policy_calls, self.policy_seconds = 0, 0.0
        start = time.perf_counter()
        plans = self._plan_samples(list(prompts), sample_steps, int(num_steps))
        self._prepared = (list(prompts), plans, time.perf_counter() - start, self.policy_calls, self.policy_seconds)

    def _resolve(self, num_samples: int, num_steps: int) -> list[list[int]]:
        """Each sample's steps for this run: those :meth:`prepare` drew, if it was called for the
        same batch, else drawn now (a random schedule is drawn once per run)."""
        resolved, self._resolved = self._resolved, None
        if resolved is not None and resolved[:2] == (num_samples, num_steps):
            return resolved[2]
        return self.schedule.resolve_samples(num_steps, num_samples)

    def start(self, prompts: Sequence[str], num_steps: int, *, meta: dict[str, Any] | None = None) -> None:
        """Begin a run of ``num_steps`` steps for ``prompts`` (one per sample)."""
        self._drop_pending()
        self.num_steps = int(num_steps)
        self.sample_steps = self._resolve(len(prompts), self.num_steps)
        self.refine_steps = sorted({s for steps in self.sample_steps for s in steps})
        self.current = list(prompts)
        self._history = [[] for _ in prompts]
        self._plan = {}
        self.policy_calls, self.policy_seconds = 0, 0.0
        self.trace = Trace(
            original_prompts=list(prompts),
            meta={"mode": self.mode, "num_steps": self.num_steps, "refine_steps": list(self.refine_steps),
                  "policy": type(self.policy).__name__, **(meta or {})},
        )
        if self.schedule.per_sample:
            self.trace.meta["sample_steps"] = [list(s) for s in self.sample_steps]
        self._started = True
        if self.mode == "ahead" and self.refine_steps and prompts:
            prepared, self._prepared = self._prepared, None
            if prepared is not None and prepared[0] == list(prompts):
                plans, latency, self.policy_calls, self.policy_seconds = prepared[1:]
            else:
                start = time.perf_counter()
                plans = self._plan_samples(list(prompts), self.sample_steps, self.num_steps)
                latency = time.perf_counter() - start
            self._install_plan(plans, latency)

    @property
    def has_pending(self) -> bool:
        """Async mode: whether a requested refinement has not been applied or dropped yet."""
        return bool(self._pending)

    def planned_apply_steps(self) -> list[int]:
        """Steps after which a prompt change may take effect, as known now.

        Segmenting samplers (ComfyUI) split sampling at these steps. In async mode with no
        ``async_delay`` an answer may take effect at any step while :attr:`has_pending`.
        """
        last = self.num_steps - 2
        steps = set(self.refine_steps) if self.mode != "ahead" else set(self._plan)
        if self.mode == "async" and self.async_delay is not None:
            steps = {s + self.async_delay for s in self.refine_steps}
        return sorted(s for s in steps if 0 <= s <= last)

    def wants_preview(self, step: int) -> bool:
        """Whether :meth:`at_step` will look at previews for this step."""
        return self.mode in ("sync", "async") and step in self.refine_steps

    def at_step(self, step: int, timestep: float | None = None, previews: PreviewSource = None) -> dict[int, str]:
        """Call after denoising step ``step`` finished. Returns ``{sample: new prompt}`` to
        condition steps ``step + 1`` onwards (empty when nothing changes now)."""
        if not self._started:
            raise RuntimeError("RefineLoop.at_step called before start()")
        if step >= self.num_steps - 1:  # nothing follows the last step
            return {}
        changes: dict[int, str] = {}
        due = [i for i, steps in enumerate(self.sample_steps) if step in steps]
        if self.mode == "sync" and due:
            observations, images, snapshots = self._observe(step, timestep, previews, due)
            refinements = self._refine_now(observations)
            changes = self._apply(step, step, observations, refinements, images, snapshots)
        elif self.mode == "async":
            # Arrivals first, so that this step's request sees the newest prompt in force.
            changes = self._collect(step)
            if due:
                self._submit(step, timestep, previews, due)
                changes.update(self._collect(step))  # async_delay=0, or an instant answer
        elif self.mode == "ahead" and step in self._plan:
            planned = self._plan.pop(step)
            indices = sorted(planned)
            refinements = [planned[i] for i in indices]
            observations = [Observation(self.trace.original_prompts[i], self.current[i], step, self.num_steps,
                                        timestep=timestep, history=list(self._history[i]), sample_index=i)
                            for i in indices]
            snapshots = [self._snapshot(o) for o in observations]
            changes = self._apply(step, step, observations, refinements, [None] * len(observations), snapshots)
        return changes

    def finish(self) -> Trace:
        """End the run: answers still pending (async) are recorded as not arrived."""
        for request in self._pending:
            for k, (obs, image) in enumerate(zip(request.observations, request.previews)):
                ref = Refinement.fallback_to(obs.current_prompt, Fallback.NOT_ARRIVED)
                if request.future.done() and request.future.exception() is None:
                    got = request.future.result()
                    if isinstance(got, list) and len(got) == len(request.observations):
                        ref.raw_text = got[k].text
                        ref.token_ids, ref.logprobs = got[k].token_ids, got[k].logprobs
                self._record(request.step, None, obs, ref, image, request.snapshots[k])
        self._pending.clear()
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        self._started = False
        self.trace.meta["policy_calls"] = self.policy_calls
        self.trace.meta["policy_s"] = round(self.policy_seconds, 4)
        return self.trace

    # -- internals --------------------------------------------------------------------------
    def _observe(self, step: int, timestep: float | None, previews: PreviewSource, indices: Sequence[int]):
        """Observations, previews and unchanged snapshots for the samples in ``indices``."""
        images = list(previews() if callable(previews) else (previews or []))
        images += [None] * (len(self.current) - len(images))
        images = [images[i] for i in indices]
        observations = [
            Observation(
                original_prompt=self.trace.original_prompts[i],
                current_prompt=self.current[i],
                step=step,
                num_steps=self.num_steps,
                timestep=timestep,
                preview=image,
                history=list(self._history[i]) if self.keep_history else [],
                sample_index=i,
            )
            for i, image in zip(indices, images)
        ]
        return observations, images, [self._snapshot(o) for o in observations]

    @staticmethod
    def _snapshot(obs: Observation) -> Observation:
        return replace(obs, history=list(obs.history))

    def _timed(self, call: Callable[[], Any]) -> Any:
        """One policy call, counted in :attr:`policy_calls` and :attr:`policy_seconds`."""
        self.policy_calls += 1
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.policy_seconds += time.perf_counter() - start

    def _refine_checked(self, observations: list[Observation]) -> list[Refinement]:
        refinements = list(self._timed(lambda: self.policy.refine(observations, **self.policy_options)))
        if len(refinements) != len(observations) or not all(isinstance(r, Refinement) for r in refinements):
            raise TypeError(f"policy returned {len(refinements)} items for {len(observations)} observations")
        return refinements

    def _fallbacks(self, observations: list[Observation], exc: BaseException) -> list[Refinement]:
        reason = Fallback.TIMEOUT if isinstance(exc, TimeoutError) else Fallback.ERROR
        message = f"{type(exc).__name__}: {exc}"
        logger.warning("policy call failed (%s); keeping the current prompts", message)
        return [Refinement.fallback_to(o.current_prompt, reason, error=message) for o in observations]

    def _refine_now(self, observations: list[Observation]) -> list[Refinement]:
        start = time.perf_counter()
        try:
            refinements = call_with_timeout(lambda: self._refine_checked(observations), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the policy must never break a generation
            refinements = self._fallbacks(observations, exc)
        latency = time.perf_counter() - start
        for ref in refinements:
            ref.latency_s = latency
        return refinements

    def _checked(self, ref: Refinement, kept: str) -> Refinement:
        """``ref`` if its text may condition the sampler, else a fallback that keeps ``kept``
        (token ids and log-probs stay: for training, a rejected answer is still an action)."""
        if ref.fallback is None:
            if passed_checks(ref, max_chars=self.max_prompt_chars):
                return ref
            problem = prompt_problem(ref.text, max_chars=self.max_prompt_chars)
            if problem is None:
                return ref
            raw = ref.raw_text if ref.raw_text is not None else (ref.text if isinstance(ref.text, str) else None)
            error = None if isinstance(ref.text, str) else f"refinement text is a {type(ref.text).__name__}, not a str"
            return replace(ref, text=kept, fallback=problem, raw_text=raw, error=ref.error or error)
        return ref if ref.text == kept else replace(ref, text=kept)

    def _apply(self, step, applied_step, observations, refinements, images, snapshots) -> dict[int, str]:
        """Validate and record each refinement; apply those that pass to the prompts in force."""
        changes: dict[int, str] = {}
        for obs, ref, image, snapshot in zip(observations, refinements, images, snapshots):
            i = obs.sample_index
            ref = self._checked(ref, self.current[i])
            took_effect = ref.fallback is None
            self._record(step, applied_step if took_effect else None, obs, ref, image, snapshot)
            if took_effect and ref.text != self.current[i]:
                self._history[i].append(self.current[i])
                self.current[i] = ref.text
                changes[i] = ref.text
        return changes

    def _record(self, step, applied_step, obs: Observation, ref: Refinement, image, snapshot=None) -> None:
        messages = ref.extra.get(MESSAGES)
        self.trace.entries.append(
            TraceEntry(
                sample_index=obs.sample_index,
                step=step,
                num_steps=self.num_steps,
                prompt_before=obs.current_prompt,
                prompt_after=ref.text,
                applied_step=applied_step,
                timestep=float(obs.timestep) if obs.timestep is not None else None,
                fallback=ref.fallback.value if ref.fallback else None,
                error=ref.error,
                raw_text=ref.raw_text,
                latency_s=ref.latency_s,
                mode=self.mode,
                preview=image if self.keep_previews else None,
                token_ids=ref.token_ids,
                logprobs=ref.logprobs,
                system_prompt=system_prompt_of(messages),
                plan_steps=ref.extra.get("plan_steps"),
                plan_index=ref.extra.get("plan_index"),
                observation=snapshot,
                messages=messages,
            )
        )

    # async ------------------------------------------------------------------------------
    def _submit(self, step: int, timestep: float | None, previews: PreviewSource, indices: Sequence[int]) -> None:
        observations, images, snapshots = self._observe(step, timestep, previews, indices)
        if self._worker is None:
            self._worker = _Worker()
        due = step + self.async_delay if self.async_delay is not None else None
        future = self._worker.submit(lambda: self._refine_checked(observations))
        self._pending.append(_AsyncRequest(step, observations, future, time.perf_counter(), due, images, snapshots))

    def _collect(self, step: int) -> dict[int, str]:
        changes: dict[int, str] = {}
        while self._pending:
            request = self._pending[0]
            if request.due_step is not None:
                if step < request.due_step:
                    break
                remaining = None
                if self.timeout_s is not None:
                    remaining = max(0.0, self.timeout_s - (time.perf_counter() - request.submitted))
                try:
                    refinements = request.future.result(timeout=remaining)
                except FutureTimeout:
                    refinements = self._fallbacks(request.observations, TimeoutError(
                        f"policy did not answer within {self.timeout_s:g} s"))
                except Exception as exc:  # noqa: BLE001
                    refinements = self._fallbacks(request.observations, exc)
            elif request.future.done():
                try:
                    refinements = request.future.result()
                except Exception as exc:  # noqa: BLE001
                    refinements = self._fallbacks(request.observations, exc)
            elif self.timeout_s is not None and time.perf_counter() - request.submitted > self.timeout_s:
                refinements = self._fallbacks(request.observations, TimeoutError(
                    f"policy did not answer within {self.timeout_s:g} s"))
            else:
                break
            self._pending.popleft()
            latency = time.perf_counter() - request.submitted
            for ref in refinements:
                ref.latency_s = ref.latency_s or latency
            # The observations stay as the policy saw them (the trace's prompt_before); a
            # fallback keeps the prompt in force now, which _apply puts in its text.
            changes.update(self._apply(request.step, step, request.observations, refinements, request.previews,
                                       request.snapshots))
        return changes

    def _drop_pending(self) -> None:
        self._pending.clear()
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # ahead ------------------------------------------------------------------------------
    def _plan_samples(self, prompts: list[str], sample_steps: list[list[int]], num_steps: int) -> list[list[Refinement]]:
        """One plan per sample for its own steps: samples sharing their steps share a call."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, steps in enumerate(sample_steps):
            if steps:
                groups.setdefault(tuple(steps), []).append(i)
        plans: list[list[Refinement]] = [[] for _ in prompts]
        for steps, indices in groups.items():
            got = self._call_plan([prompts[i] for i in indices], list(steps), num_steps)
            for i, plan in zip(indices, got):
                for ref in plan:
                    ref.extra["plan_steps"] = list(steps)
                plans[i] = plan
        return plans

    def _call_plan(self, prompts: list[str], steps: list[int], num_steps: int) -> list[list[Refinement]]:
        def call() -> list[list[Refinement]]:
            plan_fn = getattr(self.policy, "plan", None)
            if plan_fn is None:
                self.policy_calls += 1
                raise TypeError(f"{type(self.policy).__name__} has no plan() method; ahead mode needs one")
            plans = list(self._timed(lambda: plan_fn(prompts, steps, num_steps, **self.policy_options)))
            if len(plans) != len(prompts) or any(len(p) != len(steps) for p in plans):
                raise TypeError("policy.plan returned the wrong number of prompts")
            return plans

        try:
            return call_with_timeout(call, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the policy must never break a generation
            obs = [Observation(p, p, steps[0], num_steps, sample_index=i) for i, p in enumerate(prompts)]
            failed = self._fallbacks(obs, exc)
            return [[Refinement.fallback_to(p, failed[i].fallback, error=failed[i].error) for _ in steps]
                    for i, p in enumerate(prompts)]

    def _install_plan(self, plans: list[list[Refinement]], latency: float) -> None:
        """Map the j-th planned prompt of each sample to the j-th refinement step of that sample."""
        for i, (plan, steps) in enumerate(zip(plans, self.sample_steps)):
            for j, (step, ref) in enumerate(zip(steps, plan)):
                ref.latency_s = latency if j == 0 else 0.0
                ref.extra.setdefault("plan_index", j)
                self._plan.setdefault(step, {})[i] = ref
        self.trace.meta["plan_latency_s"] = latency

    def __del__(self) -> None:  # best effort: stop the worker thread
        with contextlib.suppress(Exception):
            self._drop_pending()
