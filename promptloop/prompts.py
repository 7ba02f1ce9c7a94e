"""Prompt sets by name: what trainers and ``promptloop eval`` accept as ``prompts``.

``tiny`` / ``tiny-heldout`` (the built-in tiny prompts, 15 for training / 5 held out),
``shapes[:N]`` / ``shapes-heldout[:N]`` (ShapesWorld user prompts: RL training scenes / held-out
scenes), a text file (one prompt per line, ``#`` comments), or a list of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _shapes_prompts(spec: str) -> list[str]:
    """``shapes[:N]`` (RL training prompts, 256 by default) or ``shapes-heldout[:N]`` (64)."""
    from promptloop.worlds.shapes.evaluation import heldout_prompts, training_prompts

    name, _, count = spec.partition(":")
    if name not in ("shapes", "shapes-heldout"):
        raise ValueError(f"unknown prompt set {spec!r}: use shapes[:N] or shapes-heldout[:N]")
    if name == "shapes":
        return training_prompts(int(count or 256))
    return [p for _, p in heldout_prompts(int(count or 64))]


def load_prompts(spec: str | Sequence[str], *, heldout: bool = False) -> list[str]:
    """Prompts from a list, a text file (one per line, ``#`` comments), ``tiny``/``tiny-heldout``
    (the built-in tiny prompts split 15 for training / 5 held out) or ``shapes[:N]`` /
    ``shapes-heldout[:N]`` (ShapesWorld user prompts: RL training scenes / held-out scenes)."""
    if not isinstance(spec, str):
        return [str(p) for p in spec]
    if spec in ("tiny", "tiny-train", "tiny-heldout"):
        from promptloop.testing.prompts import TINY_PROMPTS  # imports diffusers: only when needed

        return TINY_PROMPTS[15:] if spec == "tiny-heldout" else TINY_PROMPTS[:15]
    if spec.startswith("shapes"):
        return _shapes_prompts(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {spec!r} not found (or use 'tiny' / 'tiny-heldout' / "
                                "'shapes[:N]' / 'shapes-heldout[:N]' / a list)")
    lines = [line.strip() for line in path.read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{spec} holds no prompts")
    return prompts
