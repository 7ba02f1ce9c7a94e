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
_SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"
}


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


def _text_components(*encoders: type | int) -> dict[str, Any]:
    """Tokenizers and text encoders under the names diffusers pipelines take them by
    (``tokenizer``, ``text_encoder``, ``tokenizer_2``, ``text_encoder_2``, ...).

    Each entry of ``encoders`` is a CLIP model class (``CLIPTextModel`` or
    ``CLIPTextModelWithProjection``, hidden size 32) or, for a T5 encoder, its ``d_model``. All
    tokenizers are built before the first encoder, and encoders in order, so the weights drawn
    from the seed do not depend on how a family lists its components.
    """
    names = ["" if i == 0 else f"_{i + 1}" for i in range(len(encoders))]
    tokenizers = [_t5_tokenizer() if isinstance(kind, int) else _clip_tokenizer() for kind in encoders]
    components: dict[str, Any] = {f"tokenizer{n}": tok for n, tok in zip(names, tokenizers)}
    for n, kind, tok in zip(names, encoders, tokenizers):
        components[f"text_encoder{n}"] = _t5_encoder(tok, d_model=kind) if isinstance(kind, int) else kind(_clip_config(tok))
    return components


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None = None, **extra: Any) -> AutoencoderKL:
    """4-level AutoencoderKL (``vae_scale_factor`` 8). With a ``shift_factor`` it is shaped like
    the SD3/FLUX VAE: no quant convolutions."""
    if shift_factor is not None:
        extra.update(shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)
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
        scaling_factor=scaling_factor,
        **extra,
    )


def _unet(**family: Any) -> UNet2DConditionModel:
    """The SD/SDXL denoiser: a two-level UNet2DConditionModel (32 and 64 channels, one layer per
    block) on 4-channel latents; ``family`` sets its blocks and conditioning."""
    return UNet2DConditionModel(
        sample_size=_LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, **family,
    )


def _flow_scheduler(**extra: Any) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching scheduler of SD3 (shift 3); FLUX adds dynamic shifting."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, **extra)


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
    text = _text_components(CLIPTextModel)
    unet = _unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        cross_attention_dim=32,
    )
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
            vae=_vae(4, 0.18215),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
            **text,
        )
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL-shaped pipeline: two CLIP encoders (32 + 32 -> cross-attention 64), ``text_time`` added
    conditioning (6 time ids x 8 + pooled 32 = 80), EulerDiscreteScheduler as in SDXL base.
    """
    torch.manual_seed(seed)
    text = _text_components(CLIPTextModel, CLIPTextModelWithProjection)
    addition_time_embed_dim = 8
    unet = _unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=32 + 32,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim
        + text["text_encoder_2"].config.projection_dim,
    )
    # SDXL base's scheduler_config.json also carries clip_sample/set_alpha_to_one (false): Euler
    # ignores them, a DDIM/DDPM scheduler built with from_config (as the DDPO trainers do) uses them.
    scheduler = EulerDiscreteScheduler.from_config(dict(
        **_SD_BETAS,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
        clip_sample=False,
        set_alpha_to_one=False,
        sample_max_value=1.0,
        skip_prk_steps=True,
    ))
    return _finish(
        StableDiffusionXLPipeline(
            vae=_vae(4, 0.13025, force_upcast=False),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
            **text,
        )
    )


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3-shaped pipeline: SD3Transformer2DModel, two projected CLIPs (pooled 32 + 32 = 64) and a T5
    encoder (d_model 64 = joint attention dim; CLIP features 32 + 32 are zero-padded to it),
    FlowMatchEulerDiscreteScheduler (shift 3), 16-channel VAE (scaling 1.5305, shift 0.0609).
    """
    torch.manual_seed(seed)
    text = _text_components(CLIPTextModelWithProjection, CLIPTextModelWithProjection, 64)
    transformer = SD3Transformer2DModel(
        sample_size=_LATENT_SIZE, patch_size=1, in_channels=16, out_channels=16, pos_embed_max_size=32,
        num_layers=1, attention_head_dim=8, num_attention_heads=4,  # 4 heads x 8 = 32 wide
        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,  # T5 64, CLIPs 32 + 32
    )
    return _finish(
        StableDiffusion3Pipeline(
            transformer=transformer, vae=_vae(16, 1.5305, 0.0609), scheduler=_flow_scheduler(), **text
        )
    )


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """FLUX.1-dev-shaped pipeline: FluxTransformer2DModel (guidance-distilled: ``guidance_embeds``),
    CLIPTextModel (pooled 32) + T5 encoder (d_model 32), FlowMatchEulerDiscreteScheduler with dynamic
    shifting, 16-channel VAE (scaling 0.3611, shift 0.1159). 64x64 -> packed latents (B, 16, 64).
    """
    torch.manual_seed(seed)
    text = _text_components(CLIPTextModel, 32)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None,  # 16 latent channels packed 2x2
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(4, 4, 8),
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,  # T5 32, CLIP pooled 32
    )
    scheduler = _flow_scheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    return _finish(FluxPipeline(transformer=transformer, vae=_vae(16, 0.3611, 0.1159), scheduler=scheduler, **text))


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
