"""The ComfyUI side of the PromptLoop sampler: noise, sigmas, segments, previews and CLIP.

Everything here drives ComfyUI's own machinery the way its ``KSampler`` / ``KSamplerAdvanced``
nodes do (``comfy.sample.prepare_noise``, ``comfy.samplers.KSampler`` sigmas,
``comfy.sample.sample`` with ``start_step`` / ``last_step``, ``latent_preview`` for the live
previews, ``comfy.utils.ProgressBar`` for progress and interrupts) and the text is encoded the
way ``CLIPTextEncode`` does it (``clip.tokenize`` + ``clip.encode_from_tokens_scheduled``).

``comfy`` modules are imported inside functions, so that this file imports without ComfyUI (CI).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("promptloop")

PREVIEW_MODES = ("linear", "vae", "taesd", "none")


# -- conditioning ----------------------------------------------------------------------------
def batch_conditionings(conditionings: Sequence[list]) -> list:
    """Stack per-sample ComfyUI conditionings (each ``[[cond, extras]]``) into one batch.

    ComfyUI applies a conditioning whose batch size equals the latent's per sample. Token
    lengths may differ (long prompts use several 77-token chunks): like ComfyUI when it batches
    conditionings, each cond is repeated along the token axis to the least common multiple.
    Tensor extras (``pooled_output``...) are concatenated; other extras must agree.
    """
    import torch

    if not conditionings:
        raise ValueError("no conditioning to batch")
    if len(conditionings) == 1:
        return conditionings[0]
    if any(len(c) != 1 for c in conditionings):
        raise ValueError(
            "per-sample prompts need single-entry conditionings; this CLIP produced scheduled "
            "(hooked) conditionings - use a batch of one sample"
        )
    conds = [c[0][0] for c in conditionings]
    extras = [c[0][1] for c in conditionings]
    length = 1
    for c in conds:
        length = length * c.shape[1] // math.gcd(length, c.shape[1])
    conds = [c.repeat(1, length // c.shape[1], *([1] * (c.ndim - 2))) for c in conds]
    cond = torch.cat(conds, dim=0)
    merged: dict[str, Any] = {}
    for key in extras[0]:
        values = [e.get(key) for e in extras]
        first = values[0]
        if isinstance(first, torch.Tensor):
            if all(isinstance(v, torch.Tensor) and v.shape[1:] == first.shape[1:] for v in values):
                merged[key] = torch.cat(values, dim=0)
            elif key == "attention_mask":
                merged[key] = torch.cat([v.repeat(1, length // v.shape[1]) for v in values], dim=0)
            else:
                raise ValueError(f"cannot batch conditioning key {key!r} of different shapes")
        else:
            merged[key] = first
    return [[cond, merged]]


class PromptEncoder:
    """Per-sample prompts -> one ComfyUI conditioning, encoded with the graph's CLIP.

    Each distinct text is encoded once per run (``clip.tokenize`` +
    ``clip.encode_from_tokens_scheduled``, exactly what ``CLIPTextEncode`` does); when every
    sample has the same prompt the result is that single conditioning, identical to
    ``CLIPTextEncode``'s output.
    """

    def __init__(self, clip: Any) -> None:
        if clip is None:
            raise RuntimeError("the PromptLoop sampler needs a CLIP input to re-encode refined prompts")
        self.clip = clip
        self._cache: dict[str, list] = {}
        self.encoded: list[str] = []  # texts actually encoded, in order

    def encode_one(self, text: str) -> list:
        if text not in self._cache:
            tokens = self.clip.tokenize(text)
            encode = getattr(self.clip, "encode_from_tokens_scheduled", None)
            if encode is not None:
                cond = encode(tokens)
            else:  # older ComfyUI
                out, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
                cond = [[out, {"pooled_output": pooled}]]
            self._cache[text] = cond
            self.encoded.append(text)
        return self._cache[text]

    def __call__(self, prompts: Sequence[str]) -> list:
        unique = list(dict.fromkeys(prompts))
        if len(unique) == 1:
            return self.encode_one(unique[0])
        return batch_conditionings([self.encode_one(p) for p in prompts])


# -- previews for the policy -----------------------------------------------------------------
def _to_pil(rgb, size: int | None):
    """(H, W, 3) float tensor in [0, 1] -> PIL image, longer side resized to ``size``."""
    import numpy as np
    from PIL import Image

    array = (rgb.detach().float().nan_to_num(0.0).clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    image = Image.fromarray(array)
    if size:
        scale = size / max(image.size)
        if abs(scale - 1.0) > 1e-6:
            new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(new, Image.BILINEAR if scale < 1 else Image.NEAREST)
    return image


def linear_previews(x0, latent_rgb_factors, latent_rgb_factors_bias=None, size: int | None = 256):
    """Per-sample previews with a latent format's linear latent->RGB factors (ComfyUI's own).

    ``x0`` is the model-space latent ``(B, C, h, w)`` (or ``(B, C, T, h, w)``: first frame).
    """
    import torch

    if x0.ndim == 5:
        x0 = x0[:, :, 0]
    factors = torch.tensor(latent_rgb_factors, dtype=torch.float32, device=x0.device)  # (C, 3)
    bias = None
    if latent_rgb_factors_bias is not None:
        bias = torch.tensor(latent_rgb_factors_bias, dtype=torch.float32, device=x0.device)
    out = []
    for sample in x0.float():
        rgb = torch.nn.functional.linear(sample.movedim(0, -1), factors.t(), bias)  # (h, w, 3) in ~[-1, 1]
        out.append(_to_pil((rgb + 1.0) / 2.0, size))
    return out


# -- the sampler -----------------------------------------------------------------------------
class ComfySegmentSampler:
    """Runs ComfyUI's sampler over step segments, keeping the latent between them.

    With one segment covering all steps this makes exactly the call ``common_ksampler`` makes
    for ``KSampler`` (same noise, sigmas, sampler, seed), so an empty schedule reproduces
    ``KSampler`` bit for bit. Later segments continue from the previous segment's output with
    the noise disabled, as ``KSamplerAdvanced`` does with ``add_noise: disable``.
    """

    def __init__(
        self,
        model: Any,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        negative: Any,
        latent: dict,
        denoise: float = 1.0,
        *,
        preview: str = "linear",
        preview_size: int = 256,
        vae: Any = None,
    ) -> None:
        import comfy.sample
        import comfy.samplers
        import comfy.utils
        import latent_preview

        if preview not in PREVIEW_MODES:
            raise ValueError(f"unknown preview {preview!r}; choose one of {', '.join(PREVIEW_MODES)}")
        if preview == "vae" and vae is None:
            raise ValueError("preview 'vae' needs the optional vae input connected")
        self.model, self.seed, self.steps, self.cfg = model, int(seed), int(steps), float(cfg)
        self.sampler_name, self.scheduler, self.negative = sampler_name, scheduler, negative
        self.latent, self.denoise = latent, float(denoise)
        self.preview_mode, self.preview_size, self.vae = preview, int(preview_size), vae

        latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        self.noise = comfy.sample.prepare_noise(latent_image, self.seed, latent.get("batch_index"))
        self.noise_mask = latent.get("noise_mask")
        self.samples = latent_image
        self.batch_size = int(latent_image.shape[0])
        ksampler = comfy.samplers.KSampler(
            model, steps=self.steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler,
            denoise=self.denoise, model_options=model.model_options,
        )
        self.sigmas = ksampler.sigmas.detach().float().cpu()
        self.x0 = None
        self.x0_step = -1
        self.disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
        self.pbar = comfy.utils.ProgressBar(self.steps)
        self.ui_previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self._taesd = None
        self.calls: list[tuple[int, int]] = []

    # SegmentBackend -------------------------------------------------------------------------
    def run(self, start: int, end: int, positive: Any) -> None:
        import comfy.sample
        import torch

        first, last = start == 0, end >= self.steps
        if first:
            noise = self.noise
        else:
            noise = torch.zeros(self.samples.size(), dtype=self.samples.dtype, layout=self.samples.layout, device="cpu")

        def callback(i, x0, x, total_steps):
            step = start + i
            self.x0, self.x0_step = x0, step
            preview_bytes = None
            if self.ui_previewer is not None:
                preview_bytes = self.ui_previewer.decode_latent_to_preview_image("JPEG", x0)
            self.pbar.update_absolute(step + 1, self.steps, preview_bytes)

        self.samples = comfy.sample.sample(
            self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, positive, self.negative,
            self.samples, denoise=self.denoise, disable_noise=not first,
            start_step=None if first else start, last_step=None if last else end,
            force_full_denoise=last, noise_mask=self.noise_mask, callback=callback,
            disable_pbar=self.disable_pbar,
            # ancestral/SDE samplers draw fresh noise per call: vary it per segment, as a chain of
            # KSamplerAdvanced nodes with different seeds would (segment 0 is KSampler's call).
            seed=self.seed if first else self.seed + start,
        )
        self.calls.append((start, end))

    def timestep(self, step: int) -> float | None:
        if not 0 <= step < len(self.sigmas):
            return None
        try:
            model_sampling = self.model.get_model_object("model_sampling")
            return float(model_sampling.timestep(self.sigmas[step]))
        except Exception:  # noqa: BLE001 - the trace may record the sigma instead
            return float(self.sigmas[step])

    def previews(self) -> list:
        """What the policy sees: the x0 prediction of the last step run, one image per sample."""
        if self.preview_mode == "none" or self.x0 is None:
            return [None] * self.batch_size
        x0 = self.x0.detach()
        try:
            if self.preview_mode == "vae":
                images = self.vae.decode(self.model.model.process_latent_out(x0.to(self.model.load_device)).cpu())
                while images.ndim > 4:  # video VAEs: (B, T, H, W, 3) -> first frame
                    images = images[:, 0]
                return [_to_pil(img, self.preview_size) for img in images]
            if self.preview_mode == "taesd":
                taesd = self._taesd_model()
                if taesd is not None:
                    import torch

                    with torch.no_grad():
                        decoded = taesd.decode(x0.to(next(taesd.parameters()).device, torch.float32))
                    return [_to_pil(img.movedim(0, -1) * 0.5 + 0.5, self.preview_size) for img in decoded]
            fmt = self.model.model.latent_format
            if fmt.latent_rgb_factors is None:
                logger.warning("no linear preview factors for %s; the policy sees no image", type(fmt).__name__)
                return [None] * self.batch_size
            return linear_previews(x0, fmt.latent_rgb_factors, getattr(fmt, "latent_rgb_factors_bias", None),
                                   self.preview_size)
        except Exception as exc:  # noqa: BLE001 - a preview problem must not break a generation
            logger.warning("PromptLoop preview failed (%s: %s); the policy sees no image", type(exc).__name__, exc)
            return [None] * self.batch_size

    def _taesd_model(self):
        if self._taesd is None:
            import folder_paths
            from comfy.taesd.taesd import TAESD

            fmt = self.model.model.latent_format
            name = getattr(fmt, "taesd_decoder_name", None)
            path = None
            if name:
                found = next((f for f in folder_paths.get_filename_list("vae_approx") if f.startswith(name)), None)
                path = folder_paths.get_full_path("vae_approx", found) if found else None
            if not path:
                logger.warning("TAESD preview: no models/vae_approx/%s*; using the linear preview", name)
                self._taesd = False
            else:
                self._taesd = TAESD(None, path, latent_channels=fmt.latent_channels).to(self.model.load_device)
        return self._taesd or None

    def latent_out(self) -> dict:
        out = self.latent.copy()
        out["samples"] = self.samples
        return out


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
