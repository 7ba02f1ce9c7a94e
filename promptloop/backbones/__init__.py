"""Per-family adapters (SD, SDXL, SD3, FLUX) and backbone loading."""

from promptloop.backbones.base import BackboneAdapter, EncodedPrompts
from promptloop.backbones.families import (
    ADAPTERS,
    FluxAdapter,
    StableDiffusion3Adapter,
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    adapter_for,
    detect_family,
)
from promptloop.backbones.loading import load_pipeline

__all__ = [
    "ADAPTERS",
    "BackboneAdapter",
    "EncodedPrompts",
    "FluxAdapter",
    "StableDiffusion3Adapter",
    "StableDiffusionAdapter",
    "StableDiffusionXLAdapter",
    "adapter_for",
    "detect_family",
    "load_pipeline",
]
