"""The adapter contract between the hook and one diffusers pipeline family.

Families differ in what ``encode_prompt`` returns and which tensors their
``callback_on_step_end`` lets a callback replace. An adapter knows, for its family, how to
encode refined texts with the pipeline's *own* ``encode_prompt`` (so LoRA scale, clip skip and
sequence lengths match the run) and how to write the new conditioning into the positive rows of
the callback tensors, keeping the negative (CFG) rows untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from promptloop.preview import LatentFormat, latent_format_for_vae


@dataclass
class EncodedPrompts:
    """Positive conditioning for some texts, one row per text."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None


def _replace_rows(tensor: torch.Tensor, rows: Sequence[int], values: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    out[list(rows)] = values.to(device=tensor.device, dtype=tensor.dtype)
    return out


class BackboneAdapter:
    """One pipeline family. Subclasses set the class attributes and implement :meth:`encode`."""

    family: ClassVar[str] = "base"
    latent_format_name: ClassVar[str] = "sd15"
    #: Callback tensors this family can swap, beyond ``latents`` and ``prompt_embeds``.
    pooled_tensor_name: ClassVar[str | None] = None
    #: What users should know about the family's callback (shown in docs and ``promptloop info``).
    notes: ClassVar[str] = ""

    def tensor_inputs(self, available: Sequence[str]) -> list[str]:
        wanted = ["latents", "prompt_embeds"] + ([self.pooled_tensor_name] if self.pooled_tensor_name else [])
        return [name for name in wanted if name in available]

    def latent_format(self, pipe: Any) -> LatentFormat:
        vae = getattr(pipe, "vae", None)
        return latent_format_for_vae(vae, self.latent_format_name, packed=self.latent_format_name == "flux")

    def unpack_latents(self, pipe: Any, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        """Latents as the sampler holds them -> (B, C, h, w) for preview decoding."""
        return latents

    @staticmethod
    def lora_scale(pipe: Any) -> float | None:
        kwargs = getattr(pipe, "_cross_attention_kwargs", None) or getattr(pipe, "_joint_attention_kwargs", None)
        return kwargs.get("scale") if isinstance(kwargs, dict) else None

    @staticmethod
    def device(pipe: Any) -> torch.device:
        return getattr(pipe, "_execution_device", None) or pipe.device

    def encode(self, pipe: Any, texts: list[str], reference: dict[str, torch.Tensor]) -> EncodedPrompts:
        """Encode ``texts`` with the pipeline's own ``encode_prompt``; ``reference`` holds the
        callback tensors of the run (used to match sequence lengths)."""
        raise NotImplementedError

    def apply(
        self,
        callback_kwargs: dict[str, torch.Tensor],
        encoded: EncodedPrompts,
        sample_indices: Sequence[int],
        num_samples: int,
    ) -> dict[str, torch.Tensor]:
        """Write ``encoded`` row ``j`` into sample ``sample_indices[j]``'s positive rows.

        Under classifier-free guidance the pipelines concatenate ``[negative, positive]``, so the
        positive row of sample ``i`` is ``num_samples + i``; without CFG it is ``i``.
        """
        updates: dict[str, torch.Tensor] = {}
        for name, value in (("prompt_embeds", encoded.prompt_embeds), (self.pooled_tensor_name, encoded.pooled_prompt_embeds)):
            if name is None or value is None or name not in callback_kwargs:
                continue
            tensor = callback_kwargs[name]
            offset = num_samples if tensor.shape[0] == 2 * num_samples else 0
            updates[name] = _replace_rows(tensor, [offset + i for i in sample_indices], value)
        return updates
