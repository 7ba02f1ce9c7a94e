"""The policy protocol every backend implements, and a base class holding the shared logic.

A policy is batched: a list of :class:`~promptloop.refinement.Observation` in, one
:class:`~promptloop.refinement.Refinement` per observation out, in order. It never raises for
bad *model output* (that becomes a fallback); it may raise for infrastructure errors, which the
hook turns into fallbacks too.

Backends implement :meth:`GenerativePolicy.generate`: chat messages in, raw generations out.
Everything else (message building, parsing, fallbacks, ``ahead`` plans, timing) lives here once.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from promptloop.policies.messages import Message, build_messages, build_plan_messages
from promptloop.policies.parsing import DEFAULT_MAX_PROMPT_CHARS, parse_plan, parse_refinement
from promptloop.refinement import Observation, Refinement


@runtime_checkable
class Policy(Protocol):
    """Anything that turns observations into refinements, batched."""

    def refine(self, observations: Sequence[Observation]) -> list[Refinement]:
        """One refinement per observation, in the same order."""
        ...


@runtime_checkable
class PlanningPolicy(Policy, Protocol):
    """A policy that can also write all refinements up front (``ahead`` mode)."""

    def plan(self, prompts: Sequence[str], steps: Sequence[int], num_steps: int) -> list[list[Refinement]]:
        """For each prompt, one refinement per step in ``steps`` (no preview)."""
        ...


@dataclass
class Generation:
    """One raw completion from a backend."""

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finished: bool = True  # False when it stopped at the token budget


@dataclass
class SamplingConfig:
    """How the policy samples. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    return_logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class GenerativePolicy(abc.ABC):
    """Base for backends driven by chat messages (transformers, vLLM, OpenAI, sidecar)."""

    def __init__(
        self,
        sampling: SamplingConfig | None = None,
        *,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
        system_prompt: str | None = None,
    ) -> None:
        self.sampling = sampling or SamplingConfig()
        self.max_prompt_chars = max_prompt_chars
        self.system_prompt = system_prompt

    @abc.abstractmethod
    def generate(self, conversations: Sequence[list[Message]]) -> list[Generation]:
        """One generation per conversation, in order."""

    def messages_for(self, obs: Observation) -> list[Message]:
        if self.system_prompt is None:
            return build_messages(obs)
        return build_messages(obs, system_prompt=self.system_prompt)

    def refine(self, observations: Sequence[Observation]) -> list[Refinement]:
        if not observations:
            return []
        start = time.perf_counter()
        generations = self.generate([self.messages_for(obs) for obs in observations])
        latency = time.perf_counter() - start
        if len(generations) != len(observations):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(observations)} inputs")
        out = []
        for obs, gen in zip(observations, generations):
            ref = parse_refinement(
                gen.text, obs.current_prompt, finished=gen.finished, max_chars=self.max_prompt_chars
            )
            ref.token_ids, ref.logprobs, ref.latency_s = gen.token_ids, gen.logprobs, latency
            out.append(ref)
        return out

    def plan(self, prompts: Sequence[str], steps: Sequence[int], num_steps: int) -> list[list[Refinement]]:
        if not prompts:
            return []
        start = time.perf_counter()
        generations = self.generate([build_plan_messages(p, list(steps), num_steps) for p in prompts])
        latency = time.perf_counter() - start
        plans = []
        for prompt, gen in zip(prompts, generations):
            plan = parse_plan(gen.text, prompt, len(steps), max_chars=self.max_prompt_chars)
            for ref in plan:
                ref.latency_s = latency
            for j, ref in enumerate(plan):  # one generation wrote the whole plan: every line carries it
                ref.token_ids, ref.logprobs = gen.token_ids, gen.logprobs
                ref.extra["plan_index"] = j
            plans.append(plan)
        return plans


class StaticPolicy:
    """A policy that answers from a fixed function of the observation, with no model.

    Handy for tests, examples and ablations (e.g. append a style suffix), and as the reference
    "hand-written" refiner the hook is checked against.
    """

    def __init__(self, rewrite, *, name: str = "static") -> None:
        self._rewrite = rewrite
        self.name = name

    def refine(self, observations: Sequence[Observation]) -> list[Refinement]:
        start = time.perf_counter()
        texts = [self._rewrite(obs) for obs in observations]
        latency = time.perf_counter() - start
        out = []
        for obs, text in zip(observations, texts):
            ref = parse_refinement(text, obs.current_prompt)
            ref.latency_s = latency
            out.append(ref)
        return out

    def plan(self, prompts: Sequence[str], steps: Sequence[int], num_steps: int) -> list[list[Refinement]]:
        plans = []
        for prompt in prompts:
            current, history, plan = prompt, [], []
            for step in steps:
                obs = Observation(prompt, current, step, num_steps, history=list(history))
                ref = self.refine([obs])[0]
                history.append(current)
                current = ref.text
                plan.append(ref)
            plans.append(plan)
        return plans
