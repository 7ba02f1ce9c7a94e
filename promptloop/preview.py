"""Previews of the intermediate latent: predicted clean latent (x0) -> small RGB image.

Three decoders, one protocol (``decode(latents) -> list[PIL.Image]``, latents unpacked and in
the diffusion model's latent space, shape ``(B, C, h, w)``):

* :class:`VAEPreview`    - the backbone's own VAE: faithful, the slowest.
* :class:`TAESDPreview`  - a TAESD ``AutoencoderTiny`` (``madebyollin/taesd``, ``taesdxl``,
  ``taesd3``, ``taef1``): close to the VAE at a fraction of the cost.
* :class:`LinearPreview` - a per-latent-format linear map latent channels -> RGB: nearly free.
  Its matrix is fitted by least squares against the backbone's VAE (encode smooth random colour
  fields, regress RGB on latent channels) and cached, so it works for any VAE without
  hand-copied constants.

The x0 prediction itself comes from the scheduler's steps, seen through
:mod:`promptloop.capture`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from PIL import Image

PREVIEW_KINDS = ("vae", "taesd", "linear")


@dataclass(frozen=True)
class LatentFormat:
    """How a family's latents are laid out and scaled."""

    name: str
    channels: int
    scaling_factor: float
    shift_factor: float = 0.0
    packed: bool = False  # FLUX packs 2x2 patches into the channel dim: (B, h*w/4, C*4)


LATENT_FORMATS: dict[str, LatentFormat] = {
    "sd15": LatentFormat("sd15", 4, 0.18215),
    "sdxl": LatentFormat("sdxl", 4, 0.13025),
    "sd3": LatentFormat("sd3", 16, 1.5305, 0.0609),
    "flux": LatentFormat("flux", 16, 0.3611, 0.1159, packed=True),
}


def latent_format_for_vae(vae: Any, name: str, *, packed: bool = False) -> LatentFormat:
    """The latent format of a given VAE (its config wins over the registry's defaults)."""
    config = getattr(vae, "config", None)
    base = LATENT_FORMATS.get(name)
    channels = getattr(config, "latent_channels", None) or (base.channels if base else 4)
    scaling = getattr(config, "scaling_factor", None) or (base.scaling_factor if base else 1.0)
    shift = getattr(config, "shift_factor", None)
    if shift is None:
        shift = base.shift_factor if base else 0.0
    return LatentFormat(name, int(channels), float(scaling), float(shift), packed)


def unpack_flux_latents(latents: torch.Tensor, height: int, width: int, vae_scale_factor: int = 8) -> torch.Tensor:
    """(B, seq, C*4) packed FLUX latents -> (B, C, H/vae_scale, W/vae_scale)."""
    b, seq, packed_c = latents.shape
    h = 2 * (int(height) // (vae_scale_factor * 2))
    w = 2 * (int(width) // (vae_scale_factor * 2))
    if (h // 2) * (w // 2) != seq:  # size unknown or inconsistent: assume the closest square-ish grid
        h2 = round(seq**0.5)
        while seq % h2:
            h2 -= 1
        h, w = 2 * h2, 2 * (seq // h2)
    x = latents.view(b, h // 2, w // 2, packed_c // 4, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, packed_c // 4, h, w)


def to_pil(images: torch.Tensor, size: int | None = None) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images whose longer side is ``size`` (if given)."""
    images = images.detach().float()
    if size is not None:
        h, w = images.shape[-2:]
        scale = size / max(h, w)
        if scale != 1.0:
            new = (max(1, round(h * scale)), max(1, round(w * scale)))
            images = F.interpolate(images, size=new, mode="bilinear" if scale < 1 else "nearest")
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class PreviewDecoder(Protocol):
    """Model-space latents (B, C, h, w) -> one PIL image per sample."""

    kind: str

    def decode(self, latents: torch.Tensor) -> list[Image.Image]: ...


class VAEPreview:
    """Decode with a VAE (``AutoencoderKL``), applying its scaling and shift factors."""

    kind = "vae"

    def __init__(self, vae: Any, *, size: int | None = 256, latent_format: LatentFormat | None = None) -> None:
        self.vae = vae
        self.size = size
        config = vae.config
        self.scaling_factor = latent_format.scaling_factor if latent_format else config.scaling_factor
        shift = latent_format.shift_factor if latent_format else getattr(config, "shift_factor", None)
        self.shift_factor = float(shift or 0.0)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        param = next(self.vae.parameters())
        z = latents.to(device=param.device, dtype=param.dtype) / self.scaling_factor + self.shift_factor
        images = self.vae.decode(z, return_dict=False)[0]
        return to_pil(images, self.size)


class TAESDPreview(VAEPreview):
    """Decode with a TAESD ``AutoencoderTiny`` (uses its own config's scaling, normally 1.0)."""

    kind = "taesd"

    def __init__(self, taesd: Any, *, size: int | None = 256) -> None:
        super().__init__(taesd, size=size)

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, size: int | None = 256, **kwargs: Any) -> TAESDPreview:
        from diffusers import AutoencoderTiny

        return cls(AutoencoderTiny.from_pretrained(path_or_id, **kwargs).eval(), size=size)


class LinearPreview:
    """Latent channels -> RGB by a fitted affine map (C x 3 weights + 3 biases)."""

    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, *, size: int | None = 256) -> None:
        self.weight = weight.float()  # (C, 3)
        self.bias = bias.float()  # (3,)
        self.size = size

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        x = latents.float()
        rgb = torch.einsum("bchw,cr->brhw", x, self.weight.to(x.device)) + self.bias.to(x.device)[None, :, None, None]
        return to_pil(rgb, self.size)

    @classmethod
    def fit(
        cls,
        vae: Any,
        *,
        size: int | None = 256,
        latent_format: LatentFormat | None = None,
        num_images: int = 8,
        resolution: int = 128,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> LinearPreview:
        """Fit the map against ``vae``: encode smooth random colour fields, regress RGB on latents.

        The result is cached under ``cache_dir`` (default ``~/.cache/promptloop/linear_preview``),
        keyed by a hash of the VAE's weights, so a real VAE is fitted once.
        """
        key = _vae_fingerprint(vae)
        cache = Path(cache_dir or os.environ.get("PROMPTLOOP_CACHE", Path.home() / ".cache" / "promptloop"))
        cache_file = cache / "linear_preview" / f"{key}.json"
        if cache_file.exists():
            data = json.loads(cache_file.read_text())
            return cls(torch.tensor(data["weight"]), torch.tensor(data["bias"]), size=size)
        weight, bias = _fit_linear(vae, latent_format, num_images, resolution, seed)
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({"weight": weight.tolist(), "bias": bias.tolist()}))
        except OSError:
            pass  # a read-only home is no reason to fail a generation
        return cls(weight, bias, size=size)


def _vae_fingerprint(vae: Any) -> str:
    h = hashlib.sha1(type(vae).__name__.encode())
    with torch.no_grad():
        for name, p in list(vae.named_parameters())[:8]:
            h.update(name.encode())
            h.update(p.detach().float().flatten()[:64].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.inference_mode()
def _fit_linear(vae: Any, latent_format: LatentFormat | None, n: int, res: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # Smooth colour fields: low-resolution noise upsampled, plus flat patches of pure colours.
    coarse = torch.rand(n, 3, 4, 4, generator=gen) * 2 - 1
    images = F.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False).clamp(-1, 1)
    param = next(vae.parameters())
    posterior = vae.encode(images.to(param.device, param.dtype)).latent_dist
    z = posterior.mean.float().cpu()
    scaling = latent_format.scaling_factor if latent_format else vae.config.scaling_factor
    shift = latent_format.shift_factor if latent_format else float(getattr(vae.config, "shift_factor", None) or 0.0)
    z = (z - shift) * scaling  # model space, what the sampler holds
    target = F.adaptive_avg_pool2d(images, z.shape[-2:])  # (n, 3, h, w)
    x = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    x1 = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1).double()
    solution = torch.linalg.lstsq(x1, y.double()).solution.float()
    return solution[:-1], solution[-1]


def make_preview_decoder(
    kind: str | PreviewDecoder,
    *,
    vae: Any = None,
    taesd: Any = None,
    latent_format: LatentFormat | None = None,
    size: int | None = 256,
) -> PreviewDecoder:
    """Build a decoder by name: ``"vae"``, ``"taesd"`` (needs ``taesd``) or ``"linear"``."""
    if not isinstance(kind, str):
        return kind
    if kind == "vae":
        if vae is None:
            raise ValueError("preview='vae' needs the backbone's VAE")
        return VAEPreview(vae, size=size, latent_format=latent_format)
    if kind == "taesd":
        if taesd is None:
            raise ValueError("preview='taesd' needs a TAESD AutoencoderTiny (pass taesd=... or a path)")
        if isinstance(taesd, (str, os.PathLike)):
            return TAESDPreview.from_pretrained(str(taesd), size=size)
        return TAESDPreview(taesd, size=size)
    if kind == "linear":
        if vae is None:
            raise ValueError("preview='linear' is fitted against the backbone's VAE; none was found")
        return LinearPreview.fit(vae, size=size, latent_format=latent_format)
    raise ValueError(f"unknown preview kind {kind!r}; choose one of {PREVIEW_KINDS}")


def previews_from_latents(decoder: PreviewDecoder, latents: torch.Tensor, indices: Sequence[int] | None = None):
    """Decode only the samples in ``indices`` (all when None); others get ``None``."""
    n = latents.shape[0]
    if indices is None:
        indices = range(n)
    indices = list(indices)
    out: list[Image.Image | None] = [None] * n
    if not indices:
        return out
    if not torch.isfinite(latents[indices]).all():
        latents = torch.nan_to_num(latents, nan=0.0, posinf=0.0, neginf=0.0)
    for i, img in zip(indices, decoder.decode(latents[indices])):
        out[i] = img
    return out


__all__ = [
    "LATENT_FORMATS",
    "PREVIEW_KINDS",
    "LatentFormat",
    "LinearPreview",
    "PreviewDecoder",
    "TAESDPreview",
    "VAEPreview",
    "latent_format_for_vae",
    "make_preview_decoder",
    "previews_from_latents",
    "to_pil",
    "unpack_flux_latents",
]
