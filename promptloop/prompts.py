"""Prompt sets by name: what trainers and ``promptloop eval`` accept as ``prompts``.

``tiny`` / ``tiny-heldout`` (the built-in tiny prompts, 15 for training / 5 held out),
``<world>[-<set>][:N]`` (a world's prompt set, :mod:`promptloop.worlds`: ``shapes`` is ShapesWorld's
RL training prompts, ``shapes-heldout:32`` the first 32 held-out ones, ``shapes-demo`` the demo's),
a text file (one prompt per line, ``#`` comments), or a list of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

USAGE = "'tiny' / 'tiny-heldout' / '<world>[-<set>][:N]' such as 'shapes-heldout:32' / a text file / a list"


def world_prompts(spec: str) -> list[str] | None:
    """The prompts of ``<world>[-<set>][:N]`` (the world's first set if no ``-<set>``), or ``None``
    when ``spec`` names no registered world. A bad set or count is a ValueError."""
    from promptloop.worlds import available_worlds, get_world

    name, _, count = spec.partition(":")
    world_name, _, prompt_set = name.partition("-")
    if world_name not in available_worlds():
        return None
    world = get_world(world_name)
    prompt_set = prompt_set or world.prompt_sets[0]
    if prompt_set not in world.prompt_sets:
        raise ValueError(f"unknown prompt set {spec!r}: {world.title} has "
                         + ", ".join(f"{world.name}-{s}" for s in world.prompt_sets) + " (each with an optional :N)")
    if count and not (count.isdigit() and int(count) > 0):
        raise ValueError(f"prompt set {spec!r}: the count after ':' must be a whole number >= 1")
    return world.prompts(prompt_set, int(count) if count else None)


def load_prompts(spec: str | Sequence[str], *, heldout: bool = False) -> list[str]:
    """Prompts from a list, a text file (one per line, ``#`` comments), ``tiny``/``tiny-heldout``
    (the built-in tiny prompts split 15 for training / 5 held out) or a world's prompt set
    ``<world>[-<set>][:N]`` (``shapes[:N]`` / ``shapes-heldout[:N]``: ShapesWorld user prompts,
    RL training scenes / held-out scenes)."""
    if not isinstance(spec, str):
        return [str(p) for p in spec]
    if spec in ("tiny", "tiny-train", "tiny-heldout"):
        from promptloop.testing.prompts import TINY_PROMPTS  # imports diffusers: only when needed

        return TINY_PROMPTS[15:] if spec == "tiny-heldout" else TINY_PROMPTS[:15]
    path = Path(spec)
    try:
        prompts = world_prompts(spec)
    except ValueError:
        if not path.is_file():  # a file whose name starts like a world's set (``shapes-notes.txt``)
            raise
        prompts = None
    if prompts is not None:
        return prompts
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {spec!r} not found (or use {USAGE})")
    lines = [line.strip() for line in path.read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{spec} holds no prompts")
    return prompts
