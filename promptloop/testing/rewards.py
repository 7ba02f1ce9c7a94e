"""Tiny reward models built in code (real classes, random weights) for tests and demos.

* :func:`build_tiny_clip` / :func:`save_tiny_clip` - a ``CLIPModel`` + ``CLIPProcessor`` (the tiny
  CLIP tokenizer, 32-pixel images) that the ``clip``, ``pickscore`` and ``aesthetic`` rewards load.
* :func:`build_tiny_bert_tokenizer` - a word-piece ``BertTokenizer`` over the tiny prompts' words
  (plus single letters), standing in for ``bert-base-uncased`` in ImageReward tests.
* ``final_prompt_says`` (registered on import) - GRPO's sanity reward: 1 when the final prompt
  contains a word (default ``large``), else 0; a clear signal the policy alone controls.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
)

from promptloop.rewards.registry import register_reward

from .prompts import EXTRA_WORDS, TINY_PROMPTS
from .tokenization import build_clip_tokenizer


def build_tiny_clip(seed: int = 0, *, projection_dim: int = 16, image_size: int = 32) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP model (2 layers, width 32, per tower) and its processor, deterministic in ``seed``."""
    tokenizer = build_clip_tokenizer()
    text_config = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id}
    vision_config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=image_size, patch_size=8)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config.to_dict(),
                        projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_clip(path: str | Path, seed: int = 0, **options) -> Path:
    """Save :func:`build_tiny_clip`'s model and processor with ``save_pretrained``; returns ``path``."""
    path = Path(path)
    model, processor = build_tiny_clip(seed, **options)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_bert_tokenizer() -> BertTokenizer:
    """Lower-case word-piece tokenizer: the tiny prompts' words, letters and ``##``-letters."""
    words = sorted({w for text in TINY_PROMPTS + EXTRA_WORDS for w in re.findall(r"[a-z]+", text.lower())})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
              *(w for w in words if len(w) > 1), ",", "."]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})


@register_reward("final_prompt_says")
def final_prompt_says(word: str = "large"):
    """1.0 per sample whose final prompt (``metadata["final_prompt"]``) has ``word`` as a word."""
    word = word.lower()

    def score(images, prompts, metadata=None):
        finals = [m["final_prompt"] for m in metadata] if metadata else list(prompts)
        return [float(word in re.findall(r"[a-z]+", text.lower())) for text in finals]

    return score
