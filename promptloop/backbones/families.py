"""One adapter per diffusers pipeline family: SD 1.x/2.x, SDXL, SD3, FLUX."""

from __future__ import annotations

from typing import Any

import torch

from promptloop.backbones.base import BackboneAdapter, EncodedPrompts
from promptloop.preview import unpack_flux_latents


def _clip_encode_kwargs(adapter: BackboneAdapter, pipe: Any) -> dict[str, Any]:
    """What the CLIP-conditioned families' ``encode_prompt`` (SD, SDXL, SD3) gets besides the texts:
    the pipeline's device, LoRA scale and CLIP skip; one image per prompt and no negative branch
    (only the positive rows are swapped)."""
    return {
        "device": adapter.device(pipe),
        "num_images_per_prompt": 1,
        "do_classifier_free_guidance": False,
        "lora_scale": adapter.lora_scale(pipe),
        "clip_skip": getattr(pipe, "_clip_skip", None),
    }


class StableDiffusionAdapter(BackboneAdapter):
    """``StableDiffusionPipeline`` and its relatives (img2img, inpaint): one CLIP encoder."""

    family = "sd"
    latent_format_name = "sd15"
    notes = "Swaps prompt_embeds (positive rows; negative rows kept under CFG)."

    def encode(self, pipe: Any, texts: list[str], reference: dict[str, torch.Tensor]) -> EncodedPrompts:
        embeds, _ = pipe.encode_prompt(texts, **_clip_encode_kwargs(self, pipe))
        return EncodedPrompts(embeds)


class StableDiffusionXLAdapter(BackboneAdapter):
    """``StableDiffusionXLPipeline``: two CLIP encoders; pooled embeds go to ``add_text_embeds``."""

    family = "sdxl"
    latent_format_name = "sdxl"
    pooled_tensor_name = "add_text_embeds"
    notes = "Swaps prompt_embeds and add_text_embeds (pooled); the refined text feeds both encoders."

    def encode(self, pipe: Any, texts: list[str], reference: dict[str, torch.Tensor]) -> EncodedPrompts:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, **_clip_encode_kwargs(self, pipe))
        return EncodedPrompts(embeds, pooled)


class StableDiffusion3Adapter(BackboneAdapter):
    """``StableDiffusion3Pipeline``: two CLIPs + T5; pooled CLIP embeds in ``pooled_prompt_embeds``."""

    family = "sd3"
    latent_format_name = "sd3"
    pooled_tensor_name = "pooled_prompt_embeds"
    notes = "Swaps prompt_embeds (CLIP+T5) and pooled_prompt_embeds; the refined text feeds all three encoders."

    def encode(self, pipe: Any, texts: list[str], reference: dict[str, torch.Tensor]) -> EncodedPrompts:
        clip_len = getattr(pipe, "tokenizer_max_length", 77)
        max_len = max(1, reference["prompt_embeds"].shape[1] - clip_len) if "prompt_embeds" in reference else 256
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=texts, prompt_2=None, prompt_3=None, max_sequence_length=max_len, **_clip_encode_kwargs(self, pipe)
        )
        return EncodedPrompts(embeds, pooled)


class FluxAdapter(BackboneAdapter):
    """``FluxPipeline``: CLIP (pooled) + T5 (sequence); latents are packed 2x2."""

    family = "flux"
    latent_format_name = "flux"
    notes = (
        "FluxPipeline's callback exposes only latents and prompt_embeds, so the refined text "
        "replaces the T5 sequence embeddings; the pooled CLIP vector stays that of the original "
        "prompt. With true CFG (negative_prompt + true_cfg_scale) the negative branch is kept."
    )

    def encode(self, pipe: Any, texts: list[str], reference: dict[str, torch.Tensor]) -> EncodedPrompts:
        max_len = reference["prompt_embeds"].shape[1] if "prompt_embeds" in reference else 512
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=texts,
            prompt_2=None,
            device=self.device(pipe),
            num_images_per_prompt=1,
            max_sequence_length=max_len,
            lora_scale=self.lora_scale(pipe),
        )
        return EncodedPrompts(embeds, pooled)

    def apply(self, callback_kwargs, encoded, sample_indices, num_samples):
        # The pooled vector is not a callback tensor in FluxPipeline: only the sequence is swapped.
        return super().apply(callback_kwargs, EncodedPrompts(encoded.prompt_embeds), sample_indices, num_samples)

    def unpack_latents(self, pipe: Any, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        if latents.ndim != 3:
            return latents
        scale = getattr(pipe, "vae_scale_factor", 8)
        return unpack_flux_latents(latents, height or 0, width or 0, scale)


ADAPTERS: dict[str, type[BackboneAdapter]] = {
    "sd": StableDiffusionAdapter,
    "sdxl": StableDiffusionXLAdapter,
    "sd3": StableDiffusion3Adapter,
    "flux": FluxAdapter,
}


def detect_family(pipe: Any) -> str:
    """The family of a pipeline, by class name first, then by its components."""
    for cls in type(pipe).__mro__:
        name = cls.__name__
        if name.startswith("StableDiffusionXL"):
            return "sdxl"
        if name.startswith("StableDiffusion3"):
            return "sd3"
        if name.startswith("Flux"):
            return "flux"
        if name.startswith("StableDiffusion"):
            return "sd"
    components = getattr(pipe, "components", {}) or {}
    if "text_encoder_3" in components:
        return "sd3"
    if "transformer" in components and "text_encoder_2" in components:
        return "flux"
    if "unet" in components and "text_encoder_2" in components:
        return "sdxl"
    if "unet" in components and "text_encoder" in components:
        return "sd"
    raise ValueError(
        f"PromptLoop does not know how to re-encode prompts for {type(pipe).__name__}; "
        f"supported families: {', '.join(ADAPTERS)}"
    )


def adapter_for(pipe_or_family: Any) -> BackboneAdapter:
    """The adapter for a pipeline instance or a family name (``sd``, ``sdxl``, ``sd3``, ``flux``)."""
    family = pipe_or_family if isinstance(pipe_or_family, str) else detect_family(pipe_or_family)
    try:
        return ADAPTERS[family]()
    except KeyError:
        raise ValueError(f"unknown backbone family {family!r}; choose one of {', '.join(ADAPTERS)}") from None
