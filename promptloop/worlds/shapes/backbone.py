"""The ShapesWorld backbone: a small Stable Diffusion pipeline built from the real classes.

:func:`build_components` makes an untrained ``AutoencoderKL`` (64×64 RGB ↔ 8×8×4 latents), a
``CLIPTextModel`` with a word-level tokenizer over the grammar's vocabulary (a
``PreTrainedTokenizerFast``), a one-head ``UNet2DConditionModel`` and a ``DDIMScheduler``;
the training scripts (docs/shapesworld.md) train them. :func:`load_backbone` loads a shipped one as
a plain ``StableDiffusionPipeline``; where the shipped ones live is the world's to say
(:mod:`promptloop.worlds.shapes.world`).
"""

from __future__ import annotations

from pathlib import Path

from promptloop.worlds.shapes.grammar import VOCABULARY
from promptloop.worlds.shapes.world import ASSETS, BACKBONES, DEFAULT_GUIDANCE, DEFAULT_STEPS, WORLD

__all__ = ["ASSETS", "BACKBONES", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "assemble_pipeline", "backbone_path",
           "build_components", "build_tokenizer", "load_backbone"]

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<unk>"
MAX_LENGTH = 40


def build_tokenizer():
    """A word-level tokenizer over :data:`~.grammar.VOCABULARY`, wrapped for transformers."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *VOCABULARY])}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("center", "centre")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=MAX_LENGTH)


def build_components(seed: int = 0) -> dict:
    """Untrained ``vae``, ``text_encoder``, ``tokenizer``, ``unet`` and ``scheduler`` (seeded)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 64), sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_LENGTH, projection_dim=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=1,  # one head (diffusers' legacy naming)
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="epsilon")
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def assemble_pipeline(components: dict):
    """A ``StableDiffusionPipeline`` from the components (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def backbone_path(name: str = "backbone-a") -> Path:
    """Folder of a shipped backbone (one of :data:`BACKBONES`) or a path given as is."""
    return WORLD.backbone_path(name)


def load_backbone(name: str = "backbone-a", device: str = "cpu"):
    """A shipped (or trained) backbone as a plain ``StableDiffusionPipeline`` (float32)."""
    return WORLD.load_backbone(name, device=device, dtype="float32")
