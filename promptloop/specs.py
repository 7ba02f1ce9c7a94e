"""Model specs: the strings configs and command lines use to name a backbone or a policy.

A backbone spec is ``tiny:<family>`` (a tiny random pipeline built in code: ``tiny:sd``,
``tiny:sdxl``, ``tiny:sd3``, ``tiny:flux``), ``<world>:<asset>`` (a world's shipped backbone, e.g.
``shapes:backbone-a``: :mod:`promptloop.worlds`) or a local folder / hub id. A policy spec is
``tiny`` (a saved random tiny Qwen2-VL), ``tiny-warm`` (the warm-started one), ``<world>:<asset>``
(``shapes:policy-sft``) or a local folder / hub id; a policy adapter spec is ``<world>:<asset>``
(``shapes:policy-grpo``) or a folder / hub id. Trainers and ``promptloop eval`` resolve them here,
so both accept the same names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def load_backbone(spec: str, device: torch.device | str = "cpu", dtype: str | None = None) -> Any:
    """A diffusers pipeline (progress bar off): ``tiny:sd`` (or ``tiny:sdxl`` ...) builds a tiny
    one in code; ``shapes:backbone-a`` is a world's shipped one; anything else is a local folder or
    hub id (:func:`~promptloop.backbones.load_pipeline`)."""
    if spec.startswith("tiny:"):
        from promptloop.testing import tiny_pipeline

        pipe = tiny_pipeline(spec.split(":", 1)[1], device=device)
    else:
        from promptloop.backbones.loading import load_pipeline
        from promptloop.worlds import resolve_asset

        pipe = load_pipeline(resolve_asset(spec, "backbone") or spec, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def policy_adapter_path(spec: str) -> str:
    """``<world>:<asset>`` -> the world's shipped adapter folder; anything else unchanged."""
    from promptloop.worlds import resolve_asset

    return resolve_asset(spec, "adapter") or spec


def policy_base_path(spec: str) -> str:
    """``tiny`` -> a saved random tiny Qwen2-VL; ``tiny-warm`` -> the warm-started one (cached);
    ``<world>:<asset>`` -> the world's shipped policy; anything else unchanged (a local folder or hub id)."""
    if spec == "tiny-warm":
        from promptloop.testing.warmup import cached_warm_tiny_qwen2vl

        return str(cached_warm_tiny_qwen2vl())
    if spec == "tiny":
        from promptloop.testing.policy import save_tiny_qwen2vl

        cache = Path(os.environ.get("PROMPTLOOP_CACHE", Path.home() / ".cache" / "promptloop")) / "tiny-qwen2vl"
        if not (cache / "config.json").exists():
            save_tiny_qwen2vl(cache)
        return str(cache)
    from promptloop.worlds import resolve_asset

    return resolve_asset(spec, "policy") or spec
