"""PromptLoop for ComfyUI: a policy rewrites the prompt while ComfyUI's own sampler denoises.

ComfyUI loads this folder from ``custom_nodes/`` (install it with
``promptloop comfy install --comfyui /path/to/ComfyUI``); the ``promptloop`` library must be
importable from ComfyUI's Python. Inside the wheel the same folder is ``promptloop.comfy_nodes``.

Nodes (category "PromptLoop"): Load PromptLoop Policy, PromptLoop Remote Policy (sidecar),
PromptLoop Scripted Policy (no model), PromptLoop Sampler, PromptLoop Trace.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"  # shows the PromptLoop Trace text in its node (js/promptloop.js)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
