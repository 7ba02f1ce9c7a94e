"""Small worlds where a backbone is trained here and the reward is exact (see docs/shapesworld.md).

>>> from promptloop.worlds import get_world
>>> world = get_world("shapes")
>>> world.prompts("heldout", 8), world.rewards, world.backbone_path("backbone-a")

Each world is a :class:`~promptloop.worlds.base.World` in its own folder. This package names its
built-in worlds by ``module:attribute`` and imports one only when it is asked for; a world of
another package registers with :func:`register_world` or through the ``promptloop.worlds``
entry-point group of its ``pyproject.toml``::

    [project.entry-points."promptloop.worlds"]
    my_world = "my_package.world:WORLD"
"""

from __future__ import annotations

import importlib
import re

from promptloop.worlds.base import World, package_assets

ENTRY_POINT_GROUP = "promptloop.worlds"
#: Names that already mean something in prompt-set and model specs (``tiny``, ``tiny:sd``).
RESERVED = ("tiny", "random")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_WORLDS: dict[str, World] = {}
#: name -> "module:attribute" of a world not imported yet (the built-ins, then the entry points).
_PENDING: dict[str, str] = {"shapes": "promptloop.worlds.shapes.world:WORLD"}
_ENTRY_POINTS_READ = False


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name in RESERVED:
        raise ValueError(f"world name {name!r}: use lower-case letters, digits and '_' (not {', '.join(RESERVED)})")


def register_world(world: World, *, overwrite: bool = False) -> World:
    """Register ``world`` under ``world.name`` (returns it, so it can end a module's assignment)."""
    if not isinstance(world, World):
        raise TypeError(f"expected a promptloop.worlds.World, got {type(world).__name__}")
    _check_name(world.name)
    _read_entry_points()
    if not overwrite and (world.name in _PENDING or _WORLDS.get(world.name, world) is not world):
        raise ValueError(f"a world named {world.name!r} is already registered (pass overwrite=True)")
    _PENDING.pop(world.name, None)
    _WORLDS[world.name] = world
    return world


def unregister_world(name: str) -> None:
    """Forget the world ``name`` (for tests and plugins that replace one)."""
    _read_entry_points()
    _WORLDS.pop(name, None)
    _PENDING.pop(name, None)


def _read_entry_points() -> None:
    global _ENTRY_POINTS_READ
    if _ENTRY_POINTS_READ:
        return
    _ENTRY_POINTS_READ = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _WORLDS:
            _PENDING.setdefault(entry.name, entry.value)


def available_worlds() -> list[str]:
    """Names of the registered worlds (imported or not), sorted."""
    _read_entry_points()
    return sorted({*_WORLDS, *_PENDING})


def get_world(name: str) -> World:
    """The world registered as ``name``; a KeyError lists the registered ones."""
    _read_entry_points()
    if name not in _WORLDS and name in _PENDING:
        module, _, attr = _PENDING[name].partition(":")
        world = getattr(importlib.import_module(module), attr or "WORLD")
        if not isinstance(world, World) or world.name != name:
            raise TypeError(f"{_PENDING[name]} is not a promptloop.worlds.World named {name!r}")
        _PENDING.pop(name)
        _WORLDS[name] = world
    try:
        return _WORLDS[name]
    except KeyError:
        raise KeyError(f"unknown world {name!r}; registered: {', '.join(available_worlds()) or 'none'}") from None


def resolve_asset(spec: str, kind: str) -> str | None:
    """The folder of ``<world>:<asset>`` (``shapes:backbone-a``) when ``spec`` names a registered
    world's shipped ``kind`` (``backbone``, ``policy`` or ``adapter``); ``None`` when ``spec`` names
    no registered world (a path, a hub id, ``tiny:sd``). A ValueError when the world ships no such
    asset of that kind; a FileNotFoundError when it is not installed."""
    world_name, sep, asset = spec.partition(":")
    if not sep or world_name not in available_worlds():
        return None
    try:
        found, path = get_world(world_name).asset_path(asset)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if found != kind:
        raise ValueError(f"{spec} is a shipped {found}, not a {kind}")
    return str(path)


__all__ = ["World", "available_worlds", "get_world", "package_assets", "register_world", "resolve_asset",
           "unregister_world"]
