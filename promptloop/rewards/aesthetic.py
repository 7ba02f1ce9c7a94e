"""LAION aesthetic predictor v2 (``improved-aesthetic-predictor``): CLIP ViT-L/14 + an MLP head.

The image's CLIP embedding (``CLIPModel.get_image_features``, 768-d for ViT-L/14) is L2-normalised
and fed to the head ``768-1024-128-64-16-1`` (linear layers with dropout between the first four, no
activations, exactly as the original ``MLP`` class); scores are roughly 1-10. The head's weights
load from a ``.pth``/``.safetensors`` file with the original key names (``layers.0.weight`` ...), so
``sac+logos+ava1-l14-linearMSE.pth`` loads as released; the default fetches TRL's hub mirror of it
(``trl-lib/ddpo-aesthetic-predictor``, ``aesthetic-model.pth``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from promptloop.rewards.checkpoints import load_state_dict, resolve_file
from promptloop.rewards.clip import ClipEmbedder
from promptloop.rewards.registry import register_reward


class AestheticHead(nn.Module):
    """The ``MLP`` of improved-aesthetic-predictor (same layer indices, so its weights load); ImageReward
    uses the same head on its text features."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)

    @classmethod
    def from_file(cls, path: str | Path) -> AestheticHead:
        state = load_state_dict(path)
        if "layers.0.weight" not in state:
            raise ValueError(f"{path} is not an aesthetic-predictor head (no 'layers.0.weight'; "
                             f"keys: {sorted(state)[:6]}...)")
        head = cls(int(state["layers.0.weight"].shape[1]))
        head.load_state_dict(state)
        return head.eval()


class AestheticScore(ClipEmbedder):
    """Aesthetic score (about 1-10) of each image; the prompt is not used."""

    reward_name = "aesthetic"

    def __init__(self, clip_path: str | Path, head_path: str | Path, head_filename: str, **options):
        super().__init__(clip_path, **options)
        self.head = AestheticHead.from_file(
            resolve_file(head_path, head_filename, reward=self.reward_name, option="head_path"))
        projection_dim = self.model.config.projection_dim
        if self.head.input_size != projection_dim:
            raise ValueError(f"aesthetic head expects {self.head.input_size}-d CLIP embeddings but "
                             f"{clip_path} gives {projection_dim}-d ones (the LAION head needs ViT-L/14)")
        self.head.to(self.device, dtype=torch.float32)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.head(self.image_embeds(images)).squeeze(-1)


@register_reward("aesthetic")
def aesthetic(clip_path: str = "openai/clip-vit-large-patch14",
              head_path: str = "trl-lib/ddpo-aesthetic-predictor", head_filename: str = "aesthetic-model.pth",
              device: str | None = None, dtype: str | None = None, batch_size: int = 16) -> AestheticScore:
    """LAION aesthetic score v2 of each image."""
    return AestheticScore(clip_path, head_path, head_filename, device=device, dtype=dtype, batch_size=batch_size)
