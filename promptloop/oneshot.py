"""One-shot rewriting (RePrompt-style): the policy rewrites each prompt once, before sampling.

No preview, no refinement during denoising: the pipeline then samples from the rewritten prompts.
It is the baseline the step-wise loop is measured against. GRPO training in one-shot mode
(``schedule="oneshot"``) and ``promptloop eval`` (a row with ``schedule="oneshot"``) both call
:func:`oneshot_rewrite`, so they rewrite the same way.

The result is a :class:`~promptloop.trace.Trace` with one entry per sample at step ``-1``
("before the first step") holding the generated token ids and log-probs (for training), and the
prompts to sample with (the rewrite, or the original prompt where the policy's answer fell back).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from promptloop.loop import system_prompt_of
from promptloop.policies.base import MESSAGES, Policy
from promptloop.refinement import Observation
from promptloop.trace import Trace, TraceEntry

#: The schedule name that selects one-shot rewriting instead of the loop.
ONESHOT = "oneshot"


def is_oneshot(schedule: object) -> bool:
    """Whether a schedule spec means one-shot rewriting (``"oneshot"``, any case)."""
    return isinstance(schedule, str) and schedule.strip().lower() == ONESHOT


def oneshot_rewrite(
    policy: Policy, prompts: Sequence[str], num_steps: int, **policy_options: Any
) -> tuple[Trace, list[str]]:
    """Rewrite each prompt once with one batched ``policy.refine`` call (``policy_options``: its
    keyword arguments, e.g. ``sampling=``).

    Returns the trace (one entry per sample at step ``-1``, with token ids, log-probs and the
    messages when the policy returns them) and the prompts to sample with, one per input prompt.
    """
    prompts = list(prompts)
    observations = [Observation(p, p, -1, num_steps, sample_index=i) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    refinements = list(policy.refine(observations, **policy_options)) if observations else []
    policy_s = time.perf_counter() - start
    if len(refinements) != len(observations):
        raise TypeError(f"policy returned {len(refinements)} refinements for {len(observations)} prompts")
    trace = Trace(original_prompts=list(prompts),
                  meta={"mode": ONESHOT, "num_steps": num_steps, "refine_steps": [-1],
                        "policy_calls": 1 if observations else 0, "policy_s": round(policy_s, 4)})
    for obs, ref in zip(observations, refinements):
        messages = ref.extra.get(MESSAGES)
        trace.entries.append(TraceEntry(
            sample_index=obs.sample_index, step=-1, num_steps=num_steps, prompt_before=obs.current_prompt,
            prompt_after=ref.text, applied_step=-1 if ref.fallback is None else None,
            fallback=ref.fallback.value if ref.fallback else None, error=ref.error, raw_text=ref.raw_text,
            latency_s=ref.latency_s, mode=ONESHOT, token_ids=ref.token_ids, logprobs=ref.logprobs,
            system_prompt=system_prompt_of(messages), observation=dataclasses.replace(obs), messages=messages,
        ))
    return trace, trace.final_prompts()
