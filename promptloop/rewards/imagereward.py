"""ImageReward (Xu et al., 2023) rebuilt on transformers' BLIP classes.

The ``image-reward`` package does not import beside transformers 5 (its BLIP copy imports helpers
that ``transformers.modeling_utils`` no longer has, and it needs an undeclared ``clip``), so the model
is assembled here from :class:`~transformers.BlipVisionModel` (BLIP's ViT) and
:class:`~transformers.BlipTextModel` (BLIP's BERT with cross-attention to the image tokens, run
bidirectionally as BLIP's "multimodal" encoder) plus the original MLP head, and the released
``ImageReward.pt`` state dict loads into it by a key-name map (:func:`convert_imagereward_state_dict`).

Scoring follows ``ImageReward.score``: the prompt is tokenized with BERT's ``bert-base-uncased``
tokenizer (plus BLIP's ``[DEC]``/``[ENC]`` tokens), padded to 35 tokens; the image is resized
(bicubic, shorter side) and centre-cropped to 224 and normalised with CLIP's mean/std; the text
encoder's first token feeds the MLP, and the result is standardised with the released
mean 0.16717... and std 1.03333....
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from promptloop.rewards.aesthetic import AestheticHead
from promptloop.rewards.checkpoints import check_source, load_state_dict, resolve_file
from promptloop.rewards.registry import register_reward
from promptloop.rewards.scorer import BatchedScorer

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PROMPT_TOKENS = 35

_VISION_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]
# Parts of BLIP_Pretrain that ImageReward's score does not use.
_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj|itm_head|temp)|^blip\.text_encoder\.embeddings\.position_ids$")


def convert_imagereward_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``ImageReward.pt`` keys (``blip.visual_encoder.*`` timm-style ViT, ``blip.text_encoder.*``
    BLIP's BERT, ``mlp.layers.*``) to :class:`ImageRewardModel`'s (``vision.*``, ``text.*``, ``mlp.*``)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if _UNUSED.search(key):
            continue
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, replacement in _VISION_RENAMES:
                name, n = re.subn(pattern, replacement, name)
                if n:
                    break
            else:
                unknown.append(key)
                continue
            out["vision." + name] = value
        elif key.startswith("blip.text_encoder."):
            out["text." + key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp."):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in an ImageReward checkpoint: {unknown[:8]}")
    return out


class ImageRewardModel(nn.Module):
    """BLIP ViT + BLIP's cross-attending BERT + MLP head; ``forward`` gives standardised rewards."""

    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = AestheticHead(text_config.hidden_size)  # ImageReward's MLP has the same layout

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], *, vision_heads: int | None = None,
                        text_heads: int | None = None) -> ImageRewardModel:
        """Build from an ``ImageReward.pt`` state dict; sizes are read from its shapes (heads default
        to width/64: 16 for BLIP's ViT-L, 12 for BERT-base, as released)."""
        from transformers import BlipTextConfig, BlipVisionConfig

        state = convert_imagereward_state_dict(state)
        width = state["vision.embeddings.class_embedding"].shape[-1]
        patch = state["vision.embeddings.patch_embedding.weight"].shape[-1]
        grid = round((state["vision.embeddings.position_embedding"].shape[1] - 1) ** 0.5)
        vision_config = BlipVisionConfig(
            hidden_size=width, intermediate_size=state["vision.encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=_count(state, r"^vision\.encoder\.layers\.(\d+)\."),
            num_attention_heads=vision_heads or width // 64, image_size=grid * patch, patch_size=patch,
            hidden_act="gelu", layer_norm_eps=1e-6)
        vocab, hidden = state["text.embeddings.word_embeddings.weight"].shape
        text_config = BlipTextConfig(
            vocab_size=vocab, hidden_size=hidden,
            encoder_hidden_size=state["text.encoder.layer.0.crossattention.self.key.weight"].shape[1],
            intermediate_size=state["text.encoder.layer.0.intermediate.dense.weight"].shape[0],
            num_hidden_layers=_count(state, r"^text\.encoder\.layer\.(\d+)\."),
            num_attention_heads=text_heads or hidden // 64,
            max_position_embeddings=state["text.embeddings.position_embeddings.weight"].shape[0],
            hidden_act="gelu", layer_norm_eps=1e-12, is_decoder=True, pad_token_id=0, bos_token_id=None)
        model = cls(vision_config, text_config)
        model.load_state_dict(state, strict=True)
        return model.eval()

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                         encoder_attention_mask=image_atts, is_decoder=False)
        rewards = self.mlp(text.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (rewards - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return 1 + max(int(m.group(1)) for key in state if (m := regex.match(key)))


def blip_tokenizer(path: str | Path = "bert-base-uncased"):
    """BERT's tokenizer with BLIP's added ``[DEC]`` (bos) and ``[ENC]`` tokens, as ImageReward builds it."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageRewardScore(BatchedScorer):
    """ImageReward of each (image, prompt)."""

    def __init__(self, path: str | Path, filename: str, tokenizer: str | Path, *, vision_heads: int | None = None,
                 text_heads: int | None = None, **options):
        super().__init__(**options)
        from torchvision import transforms

        checkpoint = resolve_file(path, filename, reward="imagereward")
        self.model = ImageRewardModel.from_state_dict(load_state_dict(checkpoint), vision_heads=vision_heads,
                                                      text_heads=text_heads)
        self.model.to(self.device, dtype=self.dtype)
        self.tokenizer = blip_tokenizer(check_source(tokenizer, reward="imagereward", option="tokenizer"))
        if len(self.tokenizer) > self.model.text.config.vocab_size:
            raise ValueError(f"tokenizer {tokenizer!r} has {len(self.tokenizer)} tokens but the checkpoint's "
                             f"text encoder only {self.model.text.config.vocab_size}")
        size = self.model.image_size
        self.preprocess = transforms.Compose([  # ImageReward's _transform, on the PIL image
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ])

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        text = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
                              return_tensors="pt")
        pixels = torch.stack([self.preprocess(image) for image in images])
        return self.model(pixels.to(self.device, self.dtype), text.input_ids.to(self.device),
                          text.attention_mask.to(self.device))


@register_reward("imagereward")
def imagereward(path: str = "THUDM/ImageReward", filename: str = "ImageReward.pt",
                tokenizer: str = "bert-base-uncased", vision_heads: int | None = None, text_heads: int | None = None,
                device: str | None = None, dtype: str | None = None, batch_size: int = 16) -> ImageRewardScore:
    """ImageReward v1.0 of each image against its prompt (standardised: about -2 to 2)."""
    return ImageRewardScore(path, filename, tokenizer, vision_heads=vision_heads, text_heads=text_heads,
                            device=device, dtype=dtype, batch_size=batch_size)
