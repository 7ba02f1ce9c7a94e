"""Checks of a request against this server's limits (``Settings``), which its schema cannot see.

The request's shape is already valid (``schemas.py``); these answer 413 for too large a batch
and 422 for texts, histories or ``max_new_tokens`` over the limits.
"""

from __future__ import annotations

from .errors import APIError
from .schemas import PlanRequest, RefineItem, Sampling
from .settings import Settings


def check_refine(items: list[tuple[str, RefineItem]], sampling: Sampling | None, settings: Settings) -> None:
    """A refine request's items (with the prefixes that name them) and sampling overrides."""
    check_batch(len(items), "items", settings)
    for at, item in items:
        check_length(item.prompt, f"{at}prompt", settings)
        if item.current_prompt is not None:
            check_length(item.current_prompt, f"{at}current_prompt", settings)
        if len(item.history) > settings.max_history:
            raise APIError(422, "invalid_request",
                           f"{at}history: {len(item.history)} entries, more than {settings.max_history}")
        for j, entry in enumerate(item.history):
            check_length(entry, f"{at}history[{j}]", settings)
    check_sampling(sampling, settings)


def check_plan(body: PlanRequest, settings: Settings) -> None:
    """A plan request's prompts and sampling overrides."""
    check_batch(len(body.prompts), "prompts", settings)
    for i, prompt in enumerate(body.prompts):
        check_length(prompt, f"prompts[{i}]", settings)
    check_sampling(body.sampling, settings)


def check_batch(size: int, what: str, settings: Settings) -> None:
    if size > settings.max_batch:
        raise APIError(413, "batch_too_large", f"{size} {what}, more than the limit {settings.max_batch}")


def check_length(text: str, where: str, settings: Settings) -> None:
    if len(text) > settings.max_prompt_chars:
        raise APIError(422, "invalid_request",
                       f"{where}: {len(text)} characters, more than the limit {settings.max_prompt_chars}")


def check_sampling(sampling: Sampling | None, settings: Settings) -> None:
    tokens = sampling.max_new_tokens if sampling is not None else None
    if tokens is not None and tokens > settings.max_new_tokens_limit:
        raise APIError(422, "invalid_request",
                       f"sampling.max_new_tokens {tokens} exceeds this server's limit {settings.max_new_tokens_limit}")
