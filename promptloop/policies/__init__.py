"""Policy backends. All implement :class:`Policy`: observations in, refinements out, batched.

* :class:`TransformersPolicy` - in-process transformers (CPU default; trainable with peft).
* ``VLLMPolicy``             - in-process vLLM engine with LoRA adapters (``promptloop[vllm]``).
* ``HTTPPolicy``             - a remote PromptLoop sidecar (``POST /refine``).
* ``OpenAIChatPolicy``       - any OpenAI-compatible chat endpoint, e.g. ``vllm serve``.
* :class:`StaticPolicy`      - a plain Python function; for tests, ablations and examples.
* ``ProcessPolicy``          - wraps any of these in a child process (async mode without GIL contention).
"""

from __future__ import annotations

import os
from typing import Any

from promptloop.policies.base import (
    Generation,
    GenerativePolicy,
    InputTooLongError,
    PlanningPolicy,
    Policy,
    SamplingConfig,
    StaticPolicy,
)

BACKENDS = ("transformers", "vllm", "http", "openai")


def __getattr__(name: str) -> Any:  # lazy: heavy or optional dependencies
    if name == "TransformersPolicy":
        from promptloop.policies.transformers import TransformersPolicy

        return TransformersPolicy
    if name == "VLLMPolicy":
        from promptloop.policies.vllm import VLLMPolicy

        return VLLMPolicy
    if name == "HTTPPolicy":
        from promptloop.policies.http import HTTPPolicy

        return HTTPPolicy
    if name == "ProcessPolicy":
        from promptloop.policies.process import ProcessPolicy

        return ProcessPolicy
    if name == "OpenAIChatPolicy":
        from promptloop.policies.openai import OpenAIChatPolicy

        return OpenAIChatPolicy
    raise AttributeError(name)


def load_policy(
    spec: str | os.PathLike,
    *,
    backend: str | None = None,
    adapter: str | None = None,
    sampling: SamplingConfig | None = None,
    device: str | None = None,
    dtype: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    **kwargs: Any,
) -> Policy:
    """Build a policy from a path, hub id or URL.

    ``backend=None`` picks ``http`` for ``http(s)://`` URLs and ``transformers`` otherwise.
    For ``openai``, ``spec`` is the endpoint's base URL and ``model`` the served model name.
    """
    spec = str(spec)
    if backend is None:
        backend = "http" if spec.startswith(("http://", "https://")) else "transformers"
    if backend == "transformers":
        from promptloop.policies.transformers import TransformersPolicy

        return TransformersPolicy.from_pretrained(spec, adapter=adapter, device=device, dtype=dtype, sampling=sampling, **kwargs)
    if backend == "vllm":
        from promptloop.policies.vllm import VLLMPolicy

        return VLLMPolicy(spec, adapter=adapter, sampling=sampling, **kwargs)
    if backend == "http":
        from promptloop.policies.http import HTTPPolicy

        return HTTPPolicy(spec, api_key=api_key, **kwargs)
    if backend == "openai":
        from promptloop.policies.openai import OpenAIChatPolicy

        return OpenAIChatPolicy(spec, model=model or "default", api_key=api_key, sampling=sampling, **kwargs)
    raise ValueError(f"unknown policy backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Generation",
    "GenerativePolicy",
    "InputTooLongError",
    "PlanningPolicy",
    "Policy",
    "SamplingConfig",
    "StaticPolicy",
    "load_policy",
]
