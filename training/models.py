"""Loading what trainers train and sample with: the diffusion pipeline, the policy model with a
peft LoRA adapter, and the prompt lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from promptloop.training.config import TrainConfig


def load_backbone(spec: str, device: torch.device | str = "cpu", dtype: str | None = None) -> Any:
    """A diffusers pipeline: ``tiny:sd`` (or ``tiny:sdxl`` ...) builds a tiny one in code;
    anything else is a local folder or hub id."""
    if spec.startswith("tiny:"):
        from promptloop.testing import tiny_pipeline

        pipe = tiny_pipeline(spec.split(":", 1)[1], device=device)
    else:
        from promptloop.backbones.loading import load_pipeline

        pipe = load_pipeline(spec, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def policy_base_path(spec: str) -> str:
    """``tiny`` -> a saved random tiny Qwen2-VL; ``tiny-warm`` -> the warm-started one (cached);
    anything else unchanged (a local folder or hub id)."""
    if spec == "tiny-warm":
        from promptloop.testing.warmup import cached_warm_tiny_qwen2vl

        return str(cached_warm_tiny_qwen2vl())
    if spec == "tiny":
        import os

        from promptloop.testing.policy import save_tiny_qwen2vl

        cache = Path(os.environ.get("PROMPTLOOP_CACHE", Path.home() / ".cache" / "promptloop")) / "tiny-qwen2vl"
        if not (cache / "config.json").exists():
            save_tiny_qwen2vl(cache)
        return str(cache)
    return spec


def load_policy_model(config: TrainConfig, device: torch.device | str = "cpu") -> tuple[Any, Any, str]:
    """The policy model wrapped in a trainable peft LoRA (fresh, or ``config.init_adapter``), its
    processor, and the base model's path."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from promptloop.backbones.loading import resolve_dtype

    base = policy_base_path(config.policy)
    dtype = resolve_dtype(config.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32"), device)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    processor = AutoProcessor.from_pretrained(base)
    if config.init_adapter:
        model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    else:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_target_modules), bias="none")
        model = get_peft_model(model, lora)
    model.to(device)
    return model, processor, base


def _shapes_prompts(spec: str) -> list[str]:
    """``shapes[:N]`` (RL training prompts, 256 by default) or ``shapes-heldout[:N]`` (64)."""
    from promptloop.worlds.shapes.evaluation import heldout_prompts, training_prompts

    name, _, count = spec.partition(":")
    if name not in ("shapes", "shapes-heldout"):
        raise ValueError(f"unknown prompt set {spec!r}: use shapes[:N] or shapes-heldout[:N]")
    if name == "shapes":
        return training_prompts(int(count or 256))
    return [p for _, p in heldout_prompts(int(count or 64))]


def load_prompts(spec: str | list[str], *, heldout: bool = False) -> list[str]:
    """Prompts from a list, a text file (one per line, ``#`` comments), ``tiny``/``tiny-heldout``
    (the built-in tiny prompts split 15 for training / 5 held out) or ``shapes[:N]`` /
    ``shapes-heldout[:N]`` (ShapesWorld user prompts: RL training scenes / held-out scenes)."""
    from promptloop.testing.prompts import TINY_PROMPTS

    if isinstance(spec, list):
        return [str(p) for p in spec]
    if spec in ("tiny", "tiny-train"):
        return TINY_PROMPTS[:15]
    if spec == "tiny-heldout":
        return TINY_PROMPTS[15:]
    if spec.startswith("shapes"):
        return _shapes_prompts(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {spec!r} not found (or use 'tiny' / 'tiny-heldout' / a list)")
    lines = [line.strip() for line in path.read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{spec} holds no prompts")
    return prompts
