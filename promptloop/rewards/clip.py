"""CLIP score and PickScore: rewards from a transformers ``CLIPModel``.

* ``clip`` - CLIP score as torchmetrics and the literature define it (Hessel et al., 2021):
  ``max(100 * cos(E_image, E_text), 0)``; default model ``openai/clip-vit-large-patch14``.
* ``pickscore`` - PickScore (Kirstain et al., 2023), a CLIP-H fine-tuned on Pick-a-Pic preferences:
  ``logit_scale.exp() * cos(E_image, E_text)``; model ``yuvalkirstain/PickScore_v1`` with the
  processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, as its model card loads them.

Both load with ``CLIPModel.from_pretrained`` / ``CLIPProcessor.from_pretrained`` from a local folder
or a hub id.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from promptloop.rewards.checkpoints import check_source
from promptloop.rewards.registry import register_reward
from promptloop.rewards.scorer import BatchedScorer


def _pooled(output: torch.Tensor | object) -> torch.Tensor:
    """``get_*_features`` return a tensor (transformers 4) or an output whose pooler_output is it (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEmbedder(BatchedScorer):
    """A ``CLIPModel`` and its processor; L2-normalised image and text embeddings."""

    reward_name = "clip"

    def __init__(self, path: str | Path, processor_path: str | Path | None = None, **options):
        super().__init__(**options)
        from transformers import CLIPModel, CLIPProcessor

        path = check_source(path, reward=self.reward_name)
        processor_path = check_source(processor_path or path, reward=self.reward_name, option="processor_path")
        self.model = CLIPModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(processor_path)
        self.max_length = self.model.config.text_config.max_position_embeddings

    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self._to_device(self.processor(images=images, return_tensors="pt"))
        features = _pooled(self.model.get_image_features(pixel_values=inputs["pixel_values"])).float()
        return features / features.norm(dim=-1, keepdim=True)

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        inputs = self._to_device(self.processor(text=prompts, padding=True, truncation=True,
                                                max_length=self.max_length, return_tensors="pt"))
        features = _pooled(self.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))).float()
        return features / features.norm(dim=-1, keepdim=True)

    def cosine(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(dim=-1)


class ClipScore(ClipEmbedder):
    """``max(100 * cos, 0)`` per (image, prompt)."""

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return (100.0 * self.cosine(images, prompts)).clamp(min=0.0)


class PickScore(ClipEmbedder):
    """``logit_scale.exp() * cos`` per (image, prompt) (about 20-23 for real images)."""

    reward_name = "pickscore"

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.model.logit_scale.exp().float() * self.cosine(images, prompts)


@register_reward("clip")
def clip_score(path: str = "openai/clip-vit-large-patch14", processor_path: str | None = None,
               device: str | None = None, dtype: str | None = None, batch_size: int = 16) -> ClipScore:
    """CLIP score (0-100) of each image against its prompt."""
    return ClipScore(path, processor_path, device=device, dtype=dtype, batch_size=batch_size)


@register_reward("pickscore")
def pickscore(path: str = "yuvalkirstain/PickScore_v1",
              processor_path: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
              device: str | None = None, dtype: str | None = None, batch_size: int = 16) -> PickScore:
    """PickScore of each image against its prompt."""
    return PickScore(path, processor_path, device=device, dtype=dtype, batch_size=batch_size)
