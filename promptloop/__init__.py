"""PromptLoop: a multimodal LLM policy rewrites the prompt while a frozen diffusion model samples.

    from promptloop import PromptLoopHook
    from promptloop.policies import TransformersPolicy

    policy = TransformersPolicy.from_pretrained("Qwen/Qwen2.5-VL-3B-Instruct")
    image = pipe("a red fox in the snow", callback_on_step_end=PromptLoopHook(policy)).images[0]

Top-level names are imported lazily (PEP 562), so ``import promptloop`` is cheap: diffusers is
only imported when ``PromptLoopHook`` is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PromptLoopHook": "promptloop.hook",
    "MODES": "promptloop.loop",
    "RefineLoop": "promptloop.loop",
    "GenerativePolicy": "promptloop.policies",
    "Policy": "promptloop.policies",
    "SamplingConfig": "promptloop.policies",
    "StaticPolicy": "promptloop.policies",
    "load_policy": "promptloop.policies",
    "Fallback": "promptloop.refinement",
    "Observation": "promptloop.refinement",
    "Refinement": "promptloop.refinement",
    "RefineSchedule": "promptloop.schedule",
    "Trace": "promptloop.trace",
    "TraceEntry": "promptloop.trace",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'promptloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover  (``X as X``: re-exported for type checkers)
    from promptloop.hook import PromptLoopHook as PromptLoopHook
    from promptloop.loop import MODES as MODES
    from promptloop.loop import RefineLoop as RefineLoop
    from promptloop.policies import GenerativePolicy as GenerativePolicy
    from promptloop.policies import Policy as Policy
    from promptloop.policies import SamplingConfig as SamplingConfig
    from promptloop.policies import StaticPolicy as StaticPolicy
    from promptloop.policies import load_policy as load_policy
    from promptloop.refinement import Fallback as Fallback
    from promptloop.refinement import Observation as Observation
    from promptloop.refinement import Refinement as Refinement
    from promptloop.schedule import RefineSchedule as RefineSchedule
    from promptloop.trace import Trace as Trace
    from promptloop.trace import TraceEntry as TraceEntry
