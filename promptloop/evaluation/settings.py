"""How every row of an evaluation is sampled and scored (shared by all rows, so they are paired)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from promptloop.prompts import load_prompts
from promptloop.sampling import PreviewSettings, SamplingSettings

#: An extra per-image metric for Python callers: ``(images, prompts) -> one value per image``;
#: ``None`` means "not applicable" and is left out of the means.
Metric = Callable[[list[Image.Image], list[str]], Sequence[float | None]]


@dataclass
class EvalSettings(SamplingSettings, PreviewSettings):
    """Sampling and scoring settings of an evaluation.

    The sampling fields (``num_inference_steps``, ``guidance_scale``, ``height``, ``width``,
    ``preview``, ``preview_size``) and their defaults are :class:`~promptloop.sampling.SamplingSettings`'
    and :class:`~promptloop.sampling.PreviewSettings`' (keyword-only).

    Args:
        prompts: the prompts, or a prompt-set spec (``tiny-heldout``, ``shapes-heldout:32``, a
            text file: :func:`promptloop.prompts.load_prompts`), resolved on construction.
        seeds: sampling seeds; one cell per (row, seed). Image ``i`` of seed ``s`` starts from
            the noise of ``torch.Generator().manual_seed(s * 100003 + i)`` in every row.
        rewards: names from the reward registry (``promptloop.rewards``), scored per image
            against the original prompt (metadata carries ``final_prompt`` and ``original_prompt``).
        reward_options: keyword options per reward name, for its factory.
        metrics: extra per-image metrics by name (Python only; not part of the cell fingerprint
            beyond their names).
        num_strips: trace strips show the first ``num_strips`` prompts of the first seed (drawn when
            that cell is computed).
        max_new_tokens / temperature: the policy's decoding (greedy by default; with sampling the
            policy's seed is the cell's seed).
        timeout_s: longest wait for one policy answer (``None``: wait, so results are reproducible).
        device / dtype: where the backbone and the policy run (``None``: CUDA when available).
    """

    prompts: list[str] | str
    seeds: list[int]
    rewards: list[str]
    reward_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 16
    num_strips: int = 3
    max_new_tokens: int = 96
    temperature: float = 0.0
    timeout_s: float | None = None
    device: str | None = None
    dtype: str | None = None
    metrics: Mapping[str, Metric] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prompts = load_prompts(self.prompts)
        if not self.prompts:
            raise ValueError("no prompts to evaluate")
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one: {self.seeds}")
        if isinstance(self.rewards, str):
            self.rewards = [r.strip() for r in self.rewards.split(",") if r.strip()]
        self.rewards = list(self.rewards)
        clash = set(self.rewards) & set(self.metrics)
        if clash:
            raise ValueError(f"names used both as reward and metric: {sorted(clash)}")
        if not self.rewards and not self.metrics:
            raise ValueError("nothing to score: give rewards and/or metrics")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @property
    def score_names(self) -> list[str]:
        """Rewards, then metrics, in the order given."""
        return list(self.rewards) + list(self.metrics)

    def fingerprint_data(self) -> dict[str, Any]:
        """What decides a cell's values (everything but ``seeds`` and ``num_strips``)."""
        return {
            "prompts": list(self.prompts), "rewards": list(self.rewards),
            "reward_options": {k: dict(v) for k, v in sorted(self.reward_options.items())},
            "metrics": sorted(self.metrics), "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale, "height": self.height, "width": self.width,
            "preview": self.preview, "preview_size": self.preview_size, "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
            "device": self.device, "dtype": self.dtype,
        }
