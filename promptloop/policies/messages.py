"""The chat messages a policy receives, in the Qwen-VL message convention (qwen-vl-utils), and
the one preparation of their images.

One place builds them, and one place resizes their images (:func:`prepare_image`), so that every
backend (transformers, vLLM, sidecar, OpenAI-compatible), the warm-up and every trainer show the
policy exactly the same pixels and tokens.
"""

from __future__ import annotations

import math
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

#: Qwen-VL's image conventions: each side a multiple of ``IMAGE_FACTOR`` (14-pixel patches merged
#: 2 x 2), the area within ``[min_pixels, max_pixels]``, the aspect ratio at most ``MAX_ASPECT_RATIO``.
IMAGE_FACTOR = 28
MAX_ASPECT_RATIO = 200
#: The default bounds of a preview's area: 4 to 256 visual tokens for Qwen2-VL / Qwen2.5-VL.
DEFAULT_MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
DEFAULT_MAX_PIXELS = 256 * IMAGE_FACTOR * IMAGE_FACTOR


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


def prepare_image(
    image: Image.Image, *, min_pixels: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """The preview as the policy sees it: RGB, resized the Qwen-VL way (qwen-vl-utils
    ``smart_resize``: sides multiples of 28, area within ``[min_pixels, max_pixels]``, defaults
    :data:`DEFAULT_MIN_PIXELS` and :data:`DEFAULT_MAX_PIXELS`).

    An image more elongated than :data:`MAX_ASPECT_RATIO` : 1 (which Qwen-VL rejects; a 1 x 300
    preview, say) is padded with black, centred, to that ratio instead of failing; where rounding
    to multiples of 28 would push the ratio above it again, the long side is shortened.
    """
    from qwen_vl_utils.vision_process import smart_resize, to_rgb

    image = to_rgb(image)
    width, height = image.size
    bounds = {"min_pixels": min_pixels or DEFAULT_MIN_PIXELS, "max_pixels": max_pixels or None}
    short = math.ceil(max(width, height) / MAX_ASPECT_RATIO)
    padded = (width, max(height, short)) if width >= height else (max(width, short), height)
    new_height, new_width = smart_resize(padded[1], padded[0], IMAGE_FACTOR, **bounds)
    new_width, new_height = _within_aspect_ratio(new_width, new_height)
    if padded == (width, height):
        return image.resize((new_width, new_height))
    content = (max(1, round(width * new_width / padded[0])), max(1, round(height * new_height / padded[1])))
    canvas = Image.new("RGB", (new_width, new_height))
    canvas.paste(image.resize(content), ((new_width - content[0]) // 2, (new_height - content[1]) // 2))
    return canvas


def _within_aspect_ratio(width: int, height: int) -> tuple[int, int]:
    longest = min(width, height) * MAX_ASPECT_RATIO // IMAGE_FACTOR * IMAGE_FACTOR
    return (min(width, longest), height) if width >= height else (width, min(height, longest))


def prepare_conversation(
    conversation: list[Message], *, min_pixels: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[list[Message], list[Image.Image]]:
    """The conversation with each image part's image replaced by :func:`prepare_image`'s, and
    those images in order.

    Only PIL images are accepted (never paths or URLs: a server must not read files or fetch URLs
    named by a client).
    """
    images: list[Image.Image] = []
    out: list[Message] = []
    for message in conversation:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for part in content:
            if part.get("type") == "image":
                if not isinstance(part.get("image"), Image.Image):
                    raise TypeError("image parts must hold a PIL image")
                prepared = prepare_image(part["image"], min_pixels=min_pixels, max_pixels=max_pixels)
                images.append(prepared)
                part = {**part, "image": prepared}
            parts.append(part)
        out.append({**message, "content": parts})
    return out, images
