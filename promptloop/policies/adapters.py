"""peft LoRA adapter directories, as the in-process backends (transformers, vLLM) load them."""

from __future__ import annotations

import json
import os
from pathlib import Path


def check_adapter_dir(path: str | os.PathLike, max_lora_rank: int | None = None) -> Path:
    """Fail early, with a message, on a directory that is not a loadable LoRA adapter
    (``FileNotFoundError``) or whose rank exceeds ``max_lora_rank`` (``ValueError``)."""
    path = Path(path)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no LoRA adapter at {path} (adapter_config.json missing)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file} is not valid JSON: {exc}") from None
    rank = config.get("r")
    if max_lora_rank is not None and isinstance(rank, int) and rank > max_lora_rank:
        raise ValueError(f"adapter {path} has rank {rank} > max_lora_rank {max_lora_rank} of this engine")
    return path


__all__ = ["check_adapter_dir"]
