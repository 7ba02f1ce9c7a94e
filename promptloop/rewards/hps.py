"""HPS v2 / v2.1 (Human Preference Score; Wu et al., 2023) through ``open_clip_torch``.

HPS is an OpenCLIP ViT-H-14 fine-tuned on human preferences; its score is the cosine similarity
of the normalised image and text embeddings (about 0.2-0.35), as the ``hpsv2`` package computes it.
The ``hpsv2`` package itself pins old versions of protobuf and pytest, so this module builds the
model with ``open_clip.create_model_and_transforms(model_name, pretrained=<checkpoint file>)``
(open_clip unwraps the checkpoint's ``state_dict``), with open_clip's tokenizer and its
evaluation transform (bicubic resize, centre crop, OpenAI mean/std), which are HPS's.

``path`` is the checkpoint file, a folder holding it, or a hub repository (default ``xswu/HPSv2``);
``version`` picks the released file (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``);
``model_config`` optionally names an open_clip model-config JSON for another architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from promptloop.rewards.checkpoints import check_source, require, resolve_file
from promptloop.rewards.registry import register_reward
from promptloop.rewards.scorer import BatchedScorer

HPS_FILES = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class HPSScore(BatchedScorer):
    """HPS v2/v2.1 score of each (image, prompt)."""

    def __init__(self, path: str | Path, filename: str, model_name: str = "ViT-H-14",
                 model_config: str | Path | None = None, **options):
        super().__init__(**options)
        open_clip = require("open_clip", package="open_clip_torch", reward="hps")
        if model_config is not None:
            config = Path(check_source(model_config, reward="hps", option="model_config"))
            open_clip.add_model_config(config)
            model_name = config.stem
        checkpoint = resolve_file(path, filename, reward="hps")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(checkpoint), precision=_PRECISION[self.dtype], device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device, self.dtype)
        tokens = self.tokenizer(prompts).to(self.device)
        image_features = self.model.encode_image(pixels, normalize=True).float()
        text_features = self.model.encode_text(tokens, normalize=True).float()
        return (image_features * text_features).sum(dim=-1)


@register_reward("hps")
def hps(path: str = "xswu/HPSv2", version: str = "v2.1", filename: str | None = None,
        model_name: str = "ViT-H-14", model_config: str | None = None,
        device: str | None = None, dtype: str | None = None, batch_size: int = 16) -> HPSScore:
    """HPS v2.1 (or ``version="v2"``) score of each image against its prompt."""
    if filename is None:
        try:
            filename = HPS_FILES[version]
        except KeyError:
            raise ValueError(f"hps version must be one of {sorted(HPS_FILES)}, got {version!r}") from None
    return HPSScore(path, filename, model_name, model_config, device=device, dtype=dtype, batch_size=batch_size)
