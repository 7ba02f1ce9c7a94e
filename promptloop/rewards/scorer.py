"""What the model-based rewards share: device and dtype options, batching, no-grad scoring.

A :class:`BatchedScorer` is a :class:`~promptloop.rewards.Reward`: called with a list of images and
their prompts, it scores them ``batch_size`` at a time under ``torch.inference_mode`` and returns
one float per image. Subclasses implement :meth:`BatchedScorer.score_batch`. ``device`` defaults to
CUDA when available; ``dtype`` to float16 on CUDA and float32 elsewhere (:mod:`promptloop.devices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from promptloop.devices import default_device, resolve_dtype
from promptloop.rewards.registry import Metadata


class BatchedScorer:
    """Base of the model-based rewards: ``(images, prompts, metadata) -> list[float]``."""

    def __init__(self, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device or default_device())
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """One score per image (a 1-D tensor); called under ``torch.inference_mode``."""
        raise NotImplementedError

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str],
                 metadata: Metadata = None) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [image.convert("RGB") for image in images[start:start + self.batch_size]]
                out = self.score_batch(batch, list(prompts[start:start + self.batch_size]))
                scores.extend(float(s) for s in out.reshape(-1).float().cpu().tolist())
        return scores

    def _to_device(self, inputs: Any) -> dict[str, torch.Tensor]:
        """Move a processor's output to the scorer's device; floating tensors take its dtype."""
        return {k: v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in dict(inputs).items() if isinstance(v, torch.Tensor)}
