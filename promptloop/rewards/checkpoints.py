"""Where reward models' weights come from: a local file or folder, or a hub repository.

Every model-based reward takes a ``path`` option that is either a local path or a hub id; these
helpers resolve it the same way for all of them and name the reward and option in their errors.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch

from promptloop.validation import looks_local


def require(module: str, *, package: str, reward: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the pip package the reward needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"the {reward!r} reward needs the {package!r} package ({exc}); install it with "
            f"`pip install {package}` or `pip install 'promptloop[rewards]'`") from exc


def check_source(source: str | Path, *, reward: str, option: str = "path") -> str:
    """Return ``source`` as a string; raise FileNotFoundError for a local-looking path that is missing.

    Anything else (``org/name``) is left to the hub client, which reports its own errors.
    """
    text = str(source)
    if not Path(text).expanduser().exists() and looks_local(text):
        raise FileNotFoundError(f"{reward!r} reward: {option}={text!r} does not exist")
    return str(Path(text).expanduser()) if Path(text).expanduser().exists() else text


def resolve_file(source: str | Path, filename: str, *, reward: str, option: str = "path") -> Path:
    """A single weights file: ``source`` itself if it is a file, ``source/filename`` if it is a folder,
    else ``filename`` downloaded from the hub repository ``source``."""
    text = check_source(source, reward=reward, option=option)
    local = Path(text)
    if local.is_file():
        return local
    if local.is_dir():
        if not (local / filename).is_file():
            raise FileNotFoundError(f"{reward!r} reward: {option}={text!r} has no {filename!r}")
        return local / filename
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=text, filename=filename))
    except Exception as exc:  # offline, unknown repo, missing file: say which reward and option
        raise FileNotFoundError(
            f"{reward!r} reward: {option}={text!r} is not a local file or folder, and {filename!r} "
            f"could not be fetched from the hub repository {text!r}: {exc}") from exc


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``torch.save``\\ d state dict (``.pt``/``.pth``/``.bin``,
    loaded with ``weights_only=True``); a checkpoint dict holding a ``state_dict`` is unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}
