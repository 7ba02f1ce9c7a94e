"""Loading backbones from a local directory or a hub id (the path real checkpoints take)."""

from __future__ import annotations

import os
from typing import Any

import torch

from promptloop.devices import default_device, resolve_dtype


def load_pipeline(
    path_or_id: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    encoders_only: bool = False,
    **kwargs: Any,
):
    """Load a text-to-image pipeline saved with ``save_pretrained`` or from the hub.

    The pipeline class comes from the checkpoint's ``model_index.json`` (``DiffusionPipeline``
    dispatch), so SD 1.5, SDXL, SD3 and FLUX checkpoints all load here. ``encoders_only`` skips
    the denoiser (``unet``/``transformer``) for processes that only encode prompts and decode
    previews, such as the sidecar. Extra keyword arguments go to ``from_pretrained``
    (``variant="fp16"``, ``revision=...``, ``local_files_only=True`` ...).
    """
    from diffusers import DiffusionPipeline

    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    if encoders_only:
        index = DiffusionPipeline.load_config(str(path_or_id), **{k: v for k, v in kwargs.items()
                                                                if k in ("revision", "local_files_only", "token")})
        for component in ("unet", "transformer"):
            if component in index:
                kwargs.setdefault(component, None)
    if "safety_checker" in kwargs or _has_component(path_or_id, "safety_checker"):
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    pipe = DiffusionPipeline.from_pretrained(str(path_or_id), torch_dtype=torch_dtype, **kwargs)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=None)
    return pipe


def _has_component(path_or_id: str | os.PathLike, name: str) -> bool:
    index = os.path.join(str(path_or_id), "model_index.json")
    if not os.path.isfile(index):
        return False
    import json

    with open(index) as f:
        entry = json.load(f).get(name)
    return bool(entry and entry[0] is not None)
