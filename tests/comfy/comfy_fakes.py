"""Stand-ins for the two ComfyUI objects the sampler touches, for tests that run without ComfyUI.

ComfyUI is not on PyPI, so CI cannot run its CLIP or its samplers. These fakes record what the
PromptLoop sampler asks of them; the real thing is exercised by ``test_comfyui_integration.py``.
"""

from __future__ import annotations

import zlib

import torch
from PIL import Image


class FakeCLIP:
    """Records ``tokenize`` / ``encode_from_tokens_scheduled`` calls like ComfyUI's ``CLIP``.

    The "embedding" of a text is a deterministic function of it; ``long`` texts (more than
    ``chunk_words`` words) take two 77-token chunks, as ComfyUI's SD1 tokenizer does.
    """

    def __init__(self, dim: int = 8, chunk_words: int = 12) -> None:
        self.dim = dim
        self.chunk_words = chunk_words
        self.tokenized: list[str] = []
        self.encoded: list[str] = []

    def tokenize(self, text: str):
        self.tokenized.append(text)
        return {"l": text}

    def encode_from_tokens_scheduled(self, tokens):
        text = tokens["l"]
        self.encoded.append(text)
        seed = zlib.crc32(text.encode())
        gen = torch.Generator().manual_seed(seed)
        chunks = 2 if len(text.split()) > self.chunk_words else 1
        cond = torch.randn(1, 77 * chunks, self.dim, generator=gen)
        pooled = torch.randn(1, self.dim, generator=gen)
        return [[cond, {"pooled_output": pooled}]]

    def embedding(self, text: str) -> torch.Tensor:
        return self.encode_from_tokens_scheduled({"l": text})[0][0]


class FakeBackend:
    """A :class:`comfy_nodes.segments.SegmentBackend` recording every sampler call."""

    def __init__(self, num_steps: int, batch: int = 1, on_run=None) -> None:
        self.num_steps = num_steps
        self.batch = batch
        self.calls: list[tuple[int, int, object]] = []  # (start, end, positive)
        self.preview_calls: list[int] = []
        self.on_run = on_run
        self.position = 0

    def run(self, start: int, end: int, positive) -> None:
        assert start == self.position, "segments must be contiguous"
        self.calls.append((start, end, positive))
        self.position = end
        if self.on_run is not None:
            for step in range(start, end):
                self.on_run(step)

    def previews(self):
        self.preview_calls.append(self.position - 1)
        return [Image.new("RGB", (32, 32), (10 * i, 0, 0)) for i in range(self.batch)]

    def timestep(self, step: int) -> float:
        return float(1000 - 1000 * step / self.num_steps)

    def positive_at(self, step: int):
        """The conditioning the sampler used for ``step``."""
        for start, end, positive in self.calls:
            if start <= step < end:
                return positive
        raise KeyError(step)
