"""Backbones the sidecar holds: text encoders (to return prompt embeddings) and the VAE (to
decode latents into previews), loaded without the denoiser through the public loading path."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from promptloop.preview import LATENT_FORMATS, LatentFormat
from promptloop.wire import PayloadError

logger = logging.getLogger("promptloop.server")

#: The latent dtypes the server decodes (cast to the VAE's dtype); float8, integer, boolean and
#: complex latents are refused.
LATENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class HeldBackbone:
    name: str
    path: str
    pipe: Any
    adapter: Any  # promptloop.backbones.BackboneAdapter
    latent_format: LatentFormat
    preview_kind: str = "vae"
    preview_size: int | None = 256
    _decoder: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def pooled(self) -> bool:
        return self.adapter.pooled_tensor_name is not None

    def decoder(self):
        if self._decoder is None:
            from promptloop.preview import make_preview_decoder

            self._decoder = make_preview_decoder(
                self.preview_kind, vae=getattr(self.pipe, "vae", None), latent_format=self.latent_format,
                size=self.preview_size,
            )
        return self._decoder

    def check_latents(
        self, latents: torch.Tensor, batch: int, *, height: int | None, width: int | None,
        max_pixels: int | None = None, max_request_pixels: int | None = None,
    ) -> torch.Tensor:
        """Validate a client latent and return it as (B, C, h, w) model-space latents.

        Its dtype and rank are checked first (a float type the VAE decodes; ``(B, C, h, w)``, or
        packed ``(B, seq, C*4)`` for FLUX), then its shape. A latent whose decoded images would
        exceed ``max_pixels`` each (``h x w`` times the VAE's scale factor squared) or
        ``max_request_pixels`` in all is refused (413) before anything is decoded.
        """
        fmt = self.latent_format
        if latents.dtype not in LATENT_DTYPES:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in LATENT_DTYPES)
            raise PayloadError(
                f"latent dtype {str(latents.dtype).removeprefix('torch.')} is not supported; send {allowed}",
                status=422, field="latent",
            )
        if latents.ndim != 4 and not (latents.ndim == 3 and fmt.packed):
            expected = "(B, C, h, w)" + (" or packed (B, seq, C*4)" if fmt.packed else "")
            raise PayloadError(
                f"latent must be {expected}, got shape {tuple(latents.shape)}", status=422, field="latent"
            )
        if latents.shape[0] != batch:
            raise PayloadError(
                f"latent batch size {latents.shape[0]} does not match the {batch} item(s) of the request",
                status=422, field="latent",
            )
        if latents.ndim == 3:
            _, seq, packed = latents.shape
            if packed != fmt.channels * 4:
                raise PayloadError(
                    f"packed {fmt.name} latent must have {fmt.channels * 4} channels in its last dimension, "
                    f"got shape {tuple(latents.shape)}", status=422, field="latent",
                )
            if height is not None and width is not None:
                scale = getattr(self.pipe, "vae_scale_factor", 8)
                expected = (height // (scale * 2)) * (width // (scale * 2))
                if expected != seq:
                    raise PayloadError(
                        f"packed latent has {seq} positions but a {width}x{height} image has {expected}",
                        status=422, field="latent",
                    )
            elif math.isqrt(seq) ** 2 != seq:
                raise PayloadError("non-square packed latent: give 'height' and 'width'", status=422, field="latent")
            latents = self.adapter.unpack_latents(self.pipe, latents, height, width)
        if latents.shape[1] != fmt.channels:
            raise PayloadError(
                f"{fmt.name} latents have {fmt.channels} channels, got shape {tuple(latents.shape)}",
                status=422, field="latent",
            )
        if min(latents.shape[-2:]) < 1:
            raise PayloadError(f"empty latent of shape {tuple(latents.shape)}", status=422, field="latent")
        decoded_height, decoded_width = self.decoded_size(latents)
        pixels = decoded_height * decoded_width
        if max_pixels is not None and pixels > max_pixels:
            raise PayloadError(
                f"latent of shape {tuple(latents.shape)} decodes to a {decoded_width}x{decoded_height} image, "
                f"{pixels} pixels, more than the limit {max_pixels} (max_image_pixels)",
                status=413, field="latent",
            )
        total = pixels * latents.shape[0]
        if max_request_pixels is not None and total > max_request_pixels:
            raise PayloadError(
                f"latent of shape {tuple(latents.shape)} decodes to {latents.shape[0]} images of "
                f"{decoded_width}x{decoded_height}, {total} pixels in all, more than this server's limit per "
                f"request {max_request_pixels} (max_request_pixels)",
                status=413, field="latent",
            )
        if not torch.isfinite(latents).all():
            raise PayloadError("latent contains NaN or infinite values", status=422, field="latent")
        return latents

    def decoded_size(self, latents: torch.Tensor) -> tuple[int, int]:
        """(height, width) of the images that (B, C, h, w) ``latents`` decode to."""
        scale = getattr(self.pipe, "vae_scale_factor", 8)
        return latents.shape[-2] * scale, latents.shape[-1] * scale

    def decode(self, latents: torch.Tensor, *, slice_pixels: int | None = None) -> list[Image.Image]:
        """Decode (B, C, h, w) ``latents`` to previews, in slices of as many latents as decode to
        at most ``slice_pixels`` (at least one); one slice at a time across all callers, so the
        decoder's peak memory is that of one slice, whatever the batch and the concurrency."""
        height, width = self.decoded_size(latents)
        per_slice = len(latents) if slice_pixels is None else max(1, slice_pixels // (height * width))
        images: list[Image.Image] = []
        for part in latents.split(per_slice):
            with self._lock, torch.inference_mode():
                images.extend(self.decoder().decode(part))
        return images

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        with self._lock, torch.inference_mode():
            encoded = self.adapter.encode(self.pipe, list(texts), {})
        out = {"prompt_embeds": encoded.prompt_embeds.float()}
        if encoded.pooled_prompt_embeds is not None and self.pooled:
            out["pooled_prompt_embeds"] = encoded.pooled_prompt_embeds.float()
        return out


class BackboneStore:
    """Named backbones, and which one serves a given latent format."""

    def __init__(self, backbones: Mapping[str, HeldBackbone] | None = None) -> None:
        self.backbones: dict[str, HeldBackbone] = dict(backbones or {})

    @classmethod
    def load(
        cls, specs: Mapping[str, str], *, device: str | None = None, dtype: str | None = None,
        preview: str = "vae", preview_size: int | None = 256,
    ) -> BackboneStore:
        from promptloop.backbones import adapter_for, load_pipeline

        held = {}
        for name, path in specs.items():
            logger.info("loading backbone %s from %s (text encoders and VAE)", name, path)
            pipe = load_pipeline(path, device=device or "cpu", dtype=dtype, encoders_only=True)
            adapter = adapter_for(pipe)
            held[name] = HeldBackbone(
                name, str(path), pipe, adapter, adapter.latent_format(pipe), preview, preview_size
            )
        return cls(held)

    def __bool__(self) -> bool:
        return bool(self.backbones)

    def names(self) -> list[str]:
        return list(self.backbones)

    def get(self, name: str) -> HeldBackbone:
        try:
            return self.backbones[name]
        except KeyError:
            held = ", ".join(self.backbones) or "none"
            raise PayloadError(f"unknown backbone {name!r}; this server holds: {held}", status=422,
                               field="backbone") from None

    def resolve(self, name: str | None, latent_format: str | None, *, purpose: str) -> HeldBackbone:
        """The backbone for a request: by name, else the one with that latent format, else the
        only one held."""
        if latent_format is not None and latent_format not in LATENT_FORMATS:
            raise PayloadError(
                f"unknown latent format {latent_format!r}; choose one of {', '.join(LATENT_FORMATS)}",
                status=422, field="latent_format",
            )
        if name is not None:
            backbone = self.get(name)
            if latent_format is not None and backbone.latent_format.name != latent_format:
                raise PayloadError(
                    f"backbone {name!r} has latent format {backbone.latent_format.name!r}, not {latent_format!r}",
                    status=422, field="latent_format",
                )
            return backbone
        if not self.backbones:
            raise PayloadError(
                f"{purpose} needs a backbone, and this server holds none (start it with --backbone NAME=PATH)",
                status=422, field="backbone",
            )
        if latent_format is not None:
            matches = [b for b in self.backbones.values() if b.latent_format.name == latent_format]
            if not matches:
                held = ", ".join(f"{b.name} ({b.latent_format.name})" for b in self.backbones.values())
                raise PayloadError(
                    f"this server holds no backbone with latent format {latent_format!r} (it holds: {held}); "
                    "send preview images instead", status=422, field="latent_format",
                )
            return matches[0]
        if len(self.backbones) == 1:
            return next(iter(self.backbones.values()))
        raise PayloadError(
            f"{purpose}: this server holds several backbones ({', '.join(self.backbones)}); name one in 'backbone'",
            status=422, field="backbone",
        )
