"""How an image is sampled with the loop, declared once for evaluation and training.

* :class:`SamplingSettings`: the backbone's side (denoising steps, guidance scale, image size);
* :class:`PreviewSettings`: what the policy sees at a refinement (preview decoder and its size).

``promptloop eval``'s :class:`~promptloop.evaluation.EvalSettings` holds both; the trainers'
configs (``promptloop.training``) hold :class:`SamplingSettings`, and GRPO, whose rollouts run the
loop, :class:`PreviewSettings` too. The defaults here are those of ``promptloop eval``; a trainer
that samples at CPU size changes them in its config, which says why. The YAML keys are the field
names in every case. :func:`check_sampling` checks the values of either (an object or a raw mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from promptloop.validation import ConfigError, check_choice, check_ranges

#: Preview decoders a config may name (``taesd`` needs a model path, which no config field holds).
PREVIEWS = ("vae", "linear")


@dataclass(kw_only=True)
class SamplingSettings:
    """The backbone's sampling: ``num_inference_steps`` denoising steps at ``guidance_scale``,
    ``height`` x ``width`` pixels (``None``: the pipeline's default size; multiples of 8)."""

    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    height: int | None = None
    width: int | None = None

    RANGES: ClassVar[dict[str, str | None]] = {
        "num_inference_steps": ">= 1", "guidance_scale": ">= 0", "height": ">= 8", "width": ">= 8"}


@dataclass(kw_only=True)
class PreviewSettings:
    """The preview the policy sees at each refinement: ``preview`` (``vae`` decodes x̂₀ with the
    backbone's VAE, ``linear`` projects the latents) at ``preview_size`` pixels."""

    preview: str = "vae"
    preview_size: int = 112

    RANGES: ClassVar[dict[str, str | None]] = {"preview_size": ">= 1"}


def check_sampling(values: Any) -> None:
    """Ranges of :class:`SamplingSettings` and :class:`PreviewSettings` fields present in
    ``values`` (an object or a mapping), sizes a multiple of 8, a known preview decoder. Raises
    :class:`~promptloop.validation.ConfigError` naming the first bad field."""

    def get(name: str) -> Any:
        return values.get(name) if isinstance(values, Mapping) else getattr(values, name, None)

    ranges = {**SamplingSettings.RANGES, **PreviewSettings.RANGES}
    present = {name: interval for name, interval in ranges.items() if get(name) is not None}
    check_ranges(values, present, integers=[n for n in present if n != "guidance_scale"])
    for name in ("height", "width"):
        if get(name) is not None and get(name) % 8:
            raise ConfigError(name, get(name), "must be a multiple of 8")
    if get("preview") is not None:
        check_choice("preview", get("preview"), PREVIEWS)


__all__ = ["PREVIEWS", "PreviewSettings", "SamplingSettings", "check_sampling"]
