"""PromptLoop: a multimodal LLM policy rewrites the prompt while a frozen diffusion model samples.

    from promptloop import PromptLoopHook
    from promptloop.policies import TransformersPolicy

    policy = TransformersPolicy.from_pretrained("Qwen/Qwen2.5-VL-3B-Instruct")
    image = pipe("a red fox in the snow", callback_on_step_end=PromptLoopHook(policy)).images[0]
"""

from promptloop.hook import PromptLoopHook
from promptloop.loop import MODES, RefineLoop
from promptloop.policies import GenerativePolicy, Policy, SamplingConfig, StaticPolicy, load_policy
from promptloop.refinement import Fallback, Observation, Refinement
from promptloop.schedule import RefineSchedule
from promptloop.trace import Trace, TraceEntry

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "Fallback",
    "GenerativePolicy",
    "Observation",
    "Policy",
    "PromptLoopHook",
    "RefineLoop",
    "RefineSchedule",
    "Refinement",
    "SamplingConfig",
    "StaticPolicy",
    "Trace",
    "TraceEntry",
    "load_policy",
]
