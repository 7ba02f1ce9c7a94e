"""JPEG compressibility and incompressibility (DDPO's weight-free rewards).

The score is the JPEG size of the image at quality 95, in kilobytes, negated for
compressibility: smaller files (simpler images) score higher.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

from promptloop.rewards.registry import Metadata, register_reward


def jpeg_size_kb(image: Image.Image, quality: int = 95) -> float:
    """Size of ``image`` saved as JPEG at ``quality``, in kB."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


@register_reward("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95):
    def score(images: Sequence[Image.Image], prompts: Sequence[str], metadata: Metadata = None) -> list[float]:
        return [-jpeg_size_kb(image, quality) for image in images]

    return score


@register_reward("jpeg_incompressibility")
def jpeg_incompressibility(quality: int = 95):
    def score(images: Sequence[Image.Image], prompts: Sequence[str], metadata: Metadata = None) -> list[float]:
        return [jpeg_size_kb(image, quality) for image in images]

    return score
