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
from .policy import QWEN2VL_CHAT_TEMPLATE, build_tiny_qwen2vl, build_tiny_qwen2vl_processor, save_tiny_qwen2vl
from .prompts import EXTRA_WORDS, TINY_PROMPTS
from .tokenization import build_clip_tokenizer, build_qwen_tokenizer, build_t5_tokenizer

__all__ = [
    "EXTRA_WORDS",
    "FAMILIES",
    "QWEN2VL_CHAT_TEMPLATE",
    "TINY_PROMPTS",
    "build_clip_tokenizer",
    "build_qwen_tokenizer",
    "build_t5_tokenizer",
    "build_tiny_qwen2vl",
    "build_tiny_qwen2vl_processor",
    "save_tiny_pipeline",
    "save_tiny_qwen2vl",
    "tiny_flux_pipeline",
    "tiny_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
]
