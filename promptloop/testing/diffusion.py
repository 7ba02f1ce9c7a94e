"""Tiny diffusers pipelines (real classes, random weights) for tests, demos and benchmarks.

Every pipeline has ``vae_scale_factor == 8`` and a default resolution of 64x64, so 64x64 images use
8x8 latents (FLUX packs them 2x2 into 16 tokens of 64 channels). Weights are deterministic for a
given ``seed``. Schedulers carry the same configuration as the real checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .tokenization import build_clip_tokenizer, build_t5_tokenizer

FAMILIES: tuple[str, ...] = ("sd", "sdxl", "sd3", "flux")

#: Latent resolution of the default 64x64 image (``sample_size`` of the denoisers).
_LATENT_SIZE = 8

# Scheduler configurations of the real checkpoints (SD 1.5, SDXL base, SD3 medium, FLUX.1-dev).
_SD_BETAS: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


def _clip_tokenizer() -> CLIPTokenizer:
    return build_clip_tokenizer()


def _t5_tokenizer() -> T5TokenizerFast:
    return build_t5_tokenizer()


def _clip_config(tokenizer: CLIPTokenizer, *, hidden: int = 32, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_encoder(tokenizer: T5TokenizerFast, *, d_model: int = 32) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 2,
        d_ff=2 * d_model,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int, **extra: Any) -> AutoencoderKL:
    """4-level AutoencoderKL (``vae_scale_factor`` 8)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=8 * _LATENT_SIZE,
        **extra,
    )


_P = TypeVar("_P", bound=DiffusionPipeline)


def _finish(pipe: _P) -> _P:
    """Put every model in eval mode (as ``from_pretrained`` does) and silence the progress bar."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5-shaped pipeline: UNet2DConditionModel + CLIPTextModel + DDIMScheduler.

    Text embeddings are (B, 77, 32); latents (B, 4, 8, 8) at 64x64. No safety checker.
    """
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    unet = UNet2DConditionModel(
        sample_size=_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
        cross_attention_dim=32,
    )
    vae = _vae(4, scaling_factor=0.18215)
    scheduler = DDIMScheduler(
        **_SD_BETAS,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    return _finish(
        StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL-shaped pipeline: two CLIP encoders (32 + 32 -> cross-attention 64), ``text_time`` added
    conditioning (6 time ids x 8 + pooled 32 = 80), EulerDiscreteScheduler as in SDXL base.
    """
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2, projection_dim=32))
    addition_time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        norm_num_groups=8,
        cross_attention_dim=32 + 32,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim
        + text_encoder_2.config.projection_dim,
    )
    vae = _vae(4, scaling_factor=0.13025, force_upcast=False)
    scheduler = EulerDiscreteScheduler(
        **_SD_BETAS,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    return _finish(
        StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    )


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3-shaped pipeline: SD3Transformer2DModel, two projected CLIPs (pooled 32 + 32 = 64) and a T5
    encoder (d_model 64 = joint attention dim; CLIP features 32 + 32 are zero-padded to it),
    FlowMatchEulerDiscreteScheduler (shift 3), 16-channel VAE (scaling 1.5305, shift 0.0609).
    """
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer()
    tokenizer_3 = _t5_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2))
    text_encoder_3 = _t5_encoder(tokenizer_3, d_model=64)
    transformer = SD3Transformer2DModel(
        sample_size=_LATENT_SIZE,
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    vae = _vae(
        16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return _finish(
        StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )
    )


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """FLUX.1-dev-shaped pipeline: FluxTransformer2DModel (guidance-distilled: ``guidance_embeds``),
    CLIPTextModel (pooled 32) + T5 encoder (d_model 32), FlowMatchEulerDiscreteScheduler with dynamic
    shifting, 16-channel VAE (scaling 0.3611, shift 0.1159). 64x64 -> packed latents (B, 16, 64).
    """
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder_2 = _t5_encoder(tokenizer_2, d_model=32)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        out_channels=None,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    vae = _vae(
        16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return _finish(
        FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    )


_FACTORIES = {
    "sd": tiny_sd_pipeline,
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    "flux": tiny_flux_pipeline,
}


def tiny_pipeline(family: str, *, seed: int = 0, device: str | torch.device = "cpu") -> DiffusionPipeline:
    """Build the tiny pipeline of ``family`` (one of :data:`FAMILIES`) on ``device``."""
    try:
        factory = _FACTORIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}") from None
    return factory(seed=seed).to(device)


def save_tiny_pipeline(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` pipeline and ``save_pretrained`` it to ``path``; returns ``path``."""
    path = Path(path)
    tiny_pipeline(family, seed=seed).save_pretrained(path)
    return path
