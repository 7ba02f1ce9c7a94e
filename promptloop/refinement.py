"""What flows through the loop: the policy's observation and its refinement.

These two dataclasses are the whole contract between the sampler side (the diffusers hook, the
ComfyUI sampler, the HTTP sidecar) and the policy side (transformers, vLLM, a remote sidecar, an
OpenAI-compatible endpoint). Trainers reuse them as they are: a :class:`Refinement` carries the
generated token ids and their log-probs when the backend was asked for them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


class Fallback(str, enum.Enum):
    """Why a refinement was not applied and the current prompt was kept instead."""

    EMPTY = "empty"  # the policy returned no text (or only whitespace / quotes)
    TOO_LONG = "too_long"  # longer than ``max_prompt_chars``
    UNPARSABLE = "unparsable"  # control characters, replacement characters, no usable line
    TRUNCATED = "truncated"  # generation stopped at ``max_new_tokens`` before ending the prompt
    ERROR = "error"  # the policy raised
    TIMEOUT = "timeout"  # the policy did not answer within the hook's timeout
    NOT_ARRIVED = "not_arrived"  # async mode: the answer arrived after sampling ended


@dataclass
class Observation:
    """What the policy sees for one sample at one refinement step.

    ``step`` is the index of the denoising step that just finished (0-based) out of
    ``num_steps``; the refined prompt conditions steps ``step + 1`` onwards.
    ``history`` lists the earlier prompts of this sample, oldest first, not including
    ``current_prompt``.
    """

    original_prompt: str
    current_prompt: str
    step: int
    num_steps: int
    timestep: float | None = None
    preview: Image.Image | None = None
    history: list[str] = field(default_factory=list)
    sample_index: int = 0

    @property
    def progress(self) -> float:
        """Fraction of the trajectory done after this step, in (0, 1]."""
        return (self.step + 1) / max(self.num_steps, 1)


@dataclass
class Refinement:
    """The policy's answer for one observation.

    ``text`` is the prompt to use from now on: the parsed policy output, or the current prompt
    when the output was rejected (then ``fallback`` says why and ``raw_text`` keeps what the
    policy said). ``token_ids`` / ``logprobs`` are the generated tokens and their log-probs under
    the sampling policy, filled when the backend was asked for them (training).
    """

    text: str
    raw_text: str | None = None
    fallback: Fallback | None = None
    error: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    latency_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> bool:
        """True when the policy's text was accepted (no fallback)."""
        return self.fallback is None

    @classmethod
    def fallback_to(
        cls, current_prompt: str, reason: Fallback, *, raw_text: str | None = None, error: str | None = None
    ) -> Refinement:
        return cls(text=current_prompt, raw_text=raw_text, fallback=reason, error=error)
