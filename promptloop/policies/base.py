"""The policy protocol every backend implements, and a base class holding the shared logic.

A policy is batched: a list of :class:`~promptloop.refinement.Observation` in, one
:class:`~promptloop.refinement.Refinement` per observation out, in order. It never raises for
bad *model output* (that becomes a fallback); it may raise for infrastructure errors, which the
hook turns into fallbacks too.

Backends implement :meth:`GenerativePolicy.generate`: chat messages in, raw generations out.
Everything else (message building, image preparation, the input bound, parsing, fallbacks,
``ahead`` plans, timing, and the asynchronous variants a server uses) lives here once. Each
refinement carries the exact messages it was generated from in ``extra["messages"]``
(:data:`MESSAGES`), which the loop records in the trace for trainers.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from promptloop.policies.messages import (
    DEFAULT_MAX_PIXELS,
    Message,
    build_messages,
    build_plan_messages,
    prepare_conversation,
)
from promptloop.policies.parsing import DEFAULT_MAX_PROMPT_CHARS, parse_plan, parse_refinement
from promptloop.refinement import Observation, Refinement

#: The ``Refinement.extra`` key under which a policy reports the chat messages it generated from.
MESSAGES = "messages"


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

    @property
    def logprob_temperature(self) -> float:
        """The temperature log-probs are taken at: the sampling temperature (1 when greedy)."""
        return 1.0 if self.greedy else float(self.temperature)


class InputTooLongError(ValueError):
    """A conversation longer, in tokens, than the policy accepts (see
    :meth:`GenerativePolicy.input_token_limit`); raised before anything is generated."""

    def __init__(self, tokens: int, limit: int, index: int = 0) -> None:
        super().__init__(
            f"the policy input is {tokens} tokens (conversation {index}), more than the limit {limit} "
            "(max_input_tokens: the context length less max_new_tokens, unless set)"
        )
        self.tokens, self.limit, self.index = tokens, limit, index


class GenerativePolicy(abc.ABC):
    """Base for backends driven by chat messages (transformers, vLLM, OpenAI).

    The one refine path: :meth:`refine` / :meth:`arefine` build the messages
    (:mod:`promptloop.policies.messages`), call the backend's :meth:`generate` /
    :meth:`agenerate`, and parse the answers into refinements or fallbacks; :meth:`plan` /
    :meth:`aplan` do the same for ``ahead`` mode. ``sampling=`` on any of them decodes that call
    with other settings than :attr:`sampling`; other keyword arguments go to the backend's
    ``generate`` (``adapter=`` for transformers and vLLM, ``model=`` for OpenAI).

    Args:
        sampling: default decoding settings.
        max_prompt_chars: longest accepted refined prompt (longer ones fall back, ``too_long``).
        system_prompt: replaces :data:`~promptloop.policies.messages.SYSTEM_PROMPT`.
        min_pixels, max_pixels: preview bounds for :func:`~promptloop.policies.messages.prepare_image`.
        max_input_tokens: longest accepted input (chat text plus image tokens); ``None``: the
            model's context length less the call's ``max_new_tokens``, where the backend knows it.
    """

    def __init__(
        self,
        sampling: SamplingConfig | None = None,
        *,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
        system_prompt: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_input_tokens: int | None = None,
    ) -> None:
        self.sampling = sampling or SamplingConfig()
        self.max_prompt_chars = max_prompt_chars
        self.system_prompt = system_prompt
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_input_tokens = max_input_tokens

    # -- what backends implement ------------------------------------------------------------------
    @abc.abstractmethod
    def generate(
        self, conversations: Sequence[list[Message]], *, sampling: SamplingConfig | None = None, **options: Any
    ) -> list[Generation]:
        """One generation per conversation, in order, decoded with ``sampling`` (default
        :attr:`sampling`)."""

    async def agenerate(
        self, conversations: Sequence[list[Message]], *, sampling: SamplingConfig | None = None, **options: Any
    ) -> list[Generation]:
        """:meth:`generate` without blocking the event loop (on a worker thread); backends with
        an asynchronous engine override it."""
        return await asyncio.to_thread(self.generate, conversations, **_generate_kwargs(sampling, options))

    @property
    def context_length(self) -> int | None:
        """The model's context length in tokens, where the backend knows it."""
        return None

    # -- shared by the backends --------------------------------------------------------------------
    def prepare(self, conversation: list[Message]) -> tuple[list[Message], list[Image.Image]]:
        """The conversation with its images prepared for the model, and those images."""
        return prepare_conversation(conversation, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def input_token_limit(self, sampling: SamplingConfig | None = None) -> int | None:
        """The most input tokens a call decoded with ``sampling`` accepts (None: unbounded)."""
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        context = self.context_length
        if context is None:
            return None
        return max(1, context - (sampling or self.sampling).max_new_tokens)

    def check_input_tokens(self, lengths: Sequence[int], sampling: SamplingConfig | None = None) -> None:
        """Raise :class:`InputTooLongError` for the first input longer than the limit."""
        limit = self.input_token_limit(sampling)
        if limit is None:
            return
        for index, tokens in enumerate(lengths):
            if tokens > limit:
                raise InputTooLongError(int(tokens), limit, index)

    def messages_for(self, obs: Observation) -> list[Message]:
        if self.system_prompt is None:
            return build_messages(obs)
        return build_messages(obs, system_prompt=self.system_prompt)

    def plan_messages_for(
        self, prompts: Sequence[str], steps: Sequence[int], num_steps: int
    ) -> list[list[Message]]:
        """One ``ahead``-mode conversation per prompt."""
        return [build_plan_messages(p, list(steps), num_steps) for p in prompts]

    # -- the refine path ---------------------------------------------------------------------------
    def refine(
        self, observations: Sequence[Observation], *, sampling: SamplingConfig | None = None, **options: Any
    ) -> list[Refinement]:
        """One refinement per observation (see the class docstring for ``sampling`` and ``options``)."""
        start, conversations = time.perf_counter(), [self.messages_for(obs) for obs in observations]
        generations = self.generate(conversations, **_generate_kwargs(sampling, options)) if observations else []
        return self._refinements(observations, conversations, generations, start)

    async def arefine(
        self, observations: Sequence[Observation], *, sampling: SamplingConfig | None = None, **options: Any
    ) -> list[Refinement]:
        """:meth:`refine` for an event loop (a server): generation through :meth:`agenerate`."""
        start, conversations = time.perf_counter(), [self.messages_for(obs) for obs in observations]
        generations = await self.agenerate(conversations, **_generate_kwargs(sampling, options)) if observations else []
        return self._refinements(observations, conversations, generations, start)

    def plan(
        self, prompts: Sequence[str], steps: Sequence[int], num_steps: int, *,
        sampling: SamplingConfig | None = None, **options: Any,
    ) -> list[list[Refinement]]:
        """For each prompt, one refinement per step in ``steps``, written up front (no preview)."""
        start, conversations = time.perf_counter(), self.plan_messages_for(prompts, steps, num_steps)
        generations = self.generate(conversations, **_generate_kwargs(sampling, options)) if prompts else []
        return self._plans(prompts, len(steps), conversations, generations, start)

    async def aplan(
        self, prompts: Sequence[str], steps: Sequence[int], num_steps: int, *,
        sampling: SamplingConfig | None = None, **options: Any,
    ) -> list[list[Refinement]]:
        """:meth:`plan` for an event loop: generation through :meth:`agenerate`."""
        start, conversations = time.perf_counter(), self.plan_messages_for(prompts, steps, num_steps)
        generations = await self.agenerate(conversations, **_generate_kwargs(sampling, options)) if prompts else []
        return self._plans(prompts, len(steps), conversations, generations, start)

    def _refinements(
        self, observations: Sequence[Observation], conversations: Sequence[list[Message]],
        generations: Sequence[Generation], start: float,
    ) -> list[Refinement]:
        latency = time.perf_counter() - start
        if len(generations) != len(observations):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(observations)} inputs")
        out = []
        for obs, conversation, gen in zip(observations, conversations, generations):
            ref = parse_refinement(
                gen.text, obs.current_prompt, finished=gen.finished, max_chars=self.max_prompt_chars
            )
            ref.token_ids, ref.logprobs, ref.latency_s = gen.token_ids, gen.logprobs, latency
            ref.extra[MESSAGES] = conversation
            out.append(ref)
        return out

    def _plans(
        self, prompts: Sequence[str], count: int, conversations: Sequence[list[Message]],
        generations: Sequence[Generation], start: float,
    ) -> list[list[Refinement]]:
        latency = time.perf_counter() - start
        if len(generations) != len(prompts):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(prompts)} inputs")
        plans = []
        for prompt, conversation, gen in zip(prompts, conversations, generations):
            plan = parse_plan(gen.text, prompt, count, max_chars=self.max_prompt_chars)
            for j, ref in enumerate(plan):  # one generation wrote the whole plan: every line carries it
                ref.latency_s = latency
                ref.token_ids, ref.logprobs = gen.token_ids, gen.logprobs
                ref.extra.update({"plan_index": j, MESSAGES: conversation})
            plans.append(plan)
        return plans


def _generate_kwargs(sampling: SamplingConfig | None, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``generate``: ``sampling`` only when given, so backends written
    against the plain ``generate(conversations)`` keep working."""
    return {**options, "sampling": sampling} if sampling is not None else dict(options)


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
