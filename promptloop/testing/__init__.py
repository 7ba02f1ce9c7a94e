"""Tiny model factories: every backbone family and the policy, built in code with real classes and
deterministic random weights (tokenizers included), so tests, demos and benchmarks need no download.
"""

from .diffusion import (
    FAMILIES,
    save_tiny_pipeline,
    tiny_flux_pipeline,
    tiny_pipeline,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)
from .prompts import EXTRA_WORDS, TINY_PROMPTS
from .tokenization import build_clip_tokenizer, build_t5_tokenizer

__all__ = [
    "EXTRA_WORDS",
    "FAMILIES",
    "TINY_PROMPTS",
    "build_clip_tokenizer",
    "build_t5_tokenizer",
    "save_tiny_pipeline",
    "tiny_flux_pipeline",
    "tiny_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
]
