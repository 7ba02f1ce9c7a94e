"""Where models run and in which precision: device and dtype choices shared by the policies and
the backbone loaders.

    default_device()                  # "cuda" when a GPU is visible, else "cpu"
    resolve_dtype("bf16")             # torch.bfloat16
    resolve_dtype("auto", "cuda")     # torch.float16 (float32 on a CPU)
"""

from __future__ import annotations

import torch

#: Names accepted for a dtype (``--dtype`` options, ``from_pretrained(dtype=...)``).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """A dtype from its name; ``None``/``"auto"`` -> float16 on CUDA, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        on_cuda = str(device or default_device()).startswith("cuda")
        return torch.float16 if on_cuda else torch.float32
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


__all__ = ["DTYPES", "default_device", "resolve_dtype"]
