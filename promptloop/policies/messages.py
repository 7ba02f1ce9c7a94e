"""The chat messages a policy receives, in the Qwen-VL message convention (qwen-vl-utils).

One place builds them so that every backend (transformers, vLLM, sidecar, OpenAI-compatible)
and every trainer shows the policy exactly the same thing.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from promptloop.refinement import Observation

SYSTEM_PROMPT = (
    "You are a prompt editor for a text-to-image diffusion model. While the image is being "
    "generated you see a preview of the predicted final image and rewrite the prompt so that the "
    "rest of the generation better matches the user's intent and looks better. Keep the subject "
    "of the original prompt. Answer with the new prompt only, on one line, without quotes."
)

PLAN_SYSTEM_PROMPT = (
    "You are a prompt editor for a text-to-image diffusion model. Before the image is generated "
    "you write the prompts that will be used from successive points of the denoising trajectory, "
    "from coarse layout to fine detail. Keep the subject of the original prompt. Answer with one "
    "prompt per line, numbered '1.', '2.', ..., and nothing else."
)

Message = dict[str, Any]


def observation_text(obs: Observation) -> str:
    """The user turn's text for one observation."""
    lines = [
        f"Original prompt: {obs.original_prompt}",
        f"Current prompt: {obs.current_prompt}",
        f"Denoising step {obs.step + 1} of {obs.num_steps}.",
    ]
    if obs.history:
        lines.append("Earlier prompts: " + " | ".join(obs.history))
    if obs.preview is not None:
        lines.append("The image shows the model's current prediction of the final image.")
    lines.append("Write the improved prompt.")
    return "\n".join(lines)


def build_messages(obs: Observation, *, system_prompt: str = SYSTEM_PROMPT) -> list[Message]:
    """Chat messages for one observation: system, then user with the preview image first."""
    content: list[dict[str, Any]] = []
    if obs.preview is not None:
        content.append({"type": "image", "image": obs.preview})
    content.append({"type": "text", "text": observation_text(obs)})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": content},
    ]


def build_plan_messages(
    original_prompt: str, steps: list[int], num_steps: int, *, system_prompt: str = PLAN_SYSTEM_PROMPT
) -> list[Message]:
    """Messages for ``ahead`` mode: write one prompt per refinement step, without any preview."""
    when = ", ".join(f"{i + 1}. after step {s + 1} of {num_steps}" for i, s in enumerate(steps))
    text = (
        f"Original prompt: {original_prompt}\n"
        f"Write {len(steps)} prompts, used from these points on: {when}."
    )
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "text", "text": text}]},
    ]


def images_in(messages: list[Message]) -> list[Image.Image]:
    """The PIL images referenced by the messages, in order."""
    return [
        part["image"]
        for message in messages
        for part in (message["content"] if isinstance(message["content"], list) else [])
        if part.get("type") == "image" and isinstance(part.get("image"), Image.Image)
    ]
