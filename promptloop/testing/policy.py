"""A tiny Qwen2-VL policy (real classes, random weights) with its processor, built in code.

Shapes follow what vLLM's CPU kernels accept (text head_dim 64, mrope sections [8, 12, 12]); a
56x56 image is 4x4 patches of 14 px, merged 2x2 into 4 ``<|image_pad|>`` tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from .tokenization import build_qwen_tokenizer

#: Qwen2-VL's chat template: message content is a string or a list of ``{"type": "image"}`` /
#: ``{"type": "video"}`` / ``{"type": "text", "text": ...}`` parts; a default system message is
#: added when the conversation does not start with one.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_PATCH = 14
_MERGE = 2
_MIN_PIXELS = 56 * 56
_MAX_PIXELS = 224 * 224  # at most 64 image tokens per image


def build_tiny_qwen2vl_processor(texts: Iterable[str] | None = None) -> Qwen2VLProcessor:
    """Qwen2VLProcessor: tiny BPE tokenizer (left padding; its merges also learned on ``texts``),
    image and video processors, chat template."""
    tokenizer = build_qwen_tokenizer(texts, chat_template=QWEN2VL_CHAT_TEMPLATE)
    common = {
        "patch_size": _PATCH,
        "merge_size": _MERGE,
        "temporal_patch_size": 2,
        "min_pixels": _MIN_PIXELS,
        "max_pixels": _MAX_PIXELS,
    }
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        video_processor=Qwen2VLVideoProcessor(**common),
        tokenizer=tokenizer,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )


def build_tiny_qwen2vl(
    seed: int = 0,
    *,
    text_hidden: int = 128,
    text_layers: int = 2,
    vision_dim: int = 32,
    vision_depth: int = 2,
    texts: Iterable[str] | None = None,
) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    """Random-weight :class:`~transformers.Qwen2VLForConditionalGeneration` (~0.6 M parameters with
    the default sizes) and its processor. Special token ids in the config match the tokenizer;
    generation stops at ``<|im_end|>`` and pads with ``<|endoftext|>``; greedy by default. Returned
    in eval mode. ``text_hidden`` (a multiple of 64), ``text_layers``, ``vision_dim`` and
    ``vision_depth`` make it larger; ``texts`` add to the tokenizer's BPE corpus.
    """
    processor = build_tiny_qwen2vl_processor(texts)
    tok = processor.tokenizer
    names = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>")
    names += ("<|vision_start|>", "<|vision_end|>")
    ids = {name: tok.convert_tokens_to_ids(name) for name in names}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": text_hidden,
            "intermediate_size": 2 * text_hidden,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_hidden // 64,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth,
            "embed_dim": vision_dim,
            "hidden_size": text_hidden,
            "num_heads": 2,
            "mlp_ratio": 4,
            "in_channels": 3,
            "patch_size": _PATCH,
            "spatial_merge_size": _MERGE,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.eval()
    return model, processor


def save_tiny_qwen2vl(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny policy and save model + processor (chat template included) to ``path``.

    Load it back with ``Qwen2VLForConditionalGeneration.from_pretrained(path)`` and
    ``AutoProcessor.from_pretrained(path)`` (or serve it with vLLM).
    """
    path = Path(path)
    model, processor = build_tiny_qwen2vl(seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
