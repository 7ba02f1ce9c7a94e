"""Checking a configuration before anything loads: :class:`ConfigError` and the checks shared by
``promptloop train`` (the trainers' config dataclasses), ``promptloop eval`` and ``promptloop
experiment``.

A check raises :class:`ConfigError` naming the field, its value and what is wrong; the commands
print it as one line and exit with status 2 (:func:`exit_on_config_error`), before any model is
loaded. Numeric ranges are written as intervals (``"> 0"``, ``">= 1"``, ``"[0, 1)"``, ``"(0, 1]"``)
in a table per config (:func:`check_ranges`). A model spec that is not an existing path is taken
for a hub id unless it looks local (:func:`looks_local`); the hub client reports its own errors.

    check_ranges(config, {"learning_rate": "> 0", "lora_dropout": "[0, 1)"})
    check_model("backbone", "./runs/missing", kind="backbone")  # ConfigError: no such local folder
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Hub ids: ``name`` or ``org/name`` (letters, digits, ``- _ .``; no ``--`` or ``..``).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
_INTERVAL = re.compile(r"^\s*(?:(?P<op>>=|>|<=|<)\s*(?P<bound>\S+)|(?P<lo>[\[(])\s*(?P<a>\S+)\s*,\s*(?P<b>\S+)\s*(?P<hi>[\])]))\s*$")


class ConfigError(ValueError):
    """A config field holds a value that cannot work: ``str(error)`` is one line,
    ``field=value: reason``."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(" ".join(f"{field}={shown}: {reason}".split()))


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """In a command: print a :class:`ConfigError` as one line on stderr and exit with status 2."""
    import typer

    try:
        yield
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


# -- values ------------------------------------------------------------------------------------
def check_number(field: str, value: Any, interval: str | None = None, *, integer: bool = False) -> None:
    """``value`` is a finite number (an ``int`` when ``integer``) inside ``interval`` (``None``: any)."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(field, value, f"must be {kind}")
    if not math.isfinite(value):
        raise ConfigError(field, value, "must be finite")
    if interval is None:
        return
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValueError(f"bad interval {interval!r}")
    if match["op"]:
        bound, op = float(match["bound"]), match["op"]
        ok = {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
        reason = f"must be {op} {match['bound']}"
    else:
        low, high = float(match["a"]), float(match["b"])
        ok = (value > low if match["lo"] == "(" else value >= low) and (value < high if match["hi"] == ")" else value <= high)
        reason = f"must be in {interval.strip()}"
    if not ok:
        raise ConfigError(field, value, reason)


def check_ranges(obj: Any, ranges: Mapping[str, str | None], *, prefix: str = "",
                 integers: Sequence[str] = ()) -> None:
    """:func:`check_number` for each ``name -> interval`` of ``ranges`` on ``obj``'s attribute (or
    mapping key) ``name``; ``None`` values are skipped (optional fields), ``integers`` must be ints."""
    for name, interval in ranges.items():
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name)
        if value is not None:
            check_number(prefix + name, value, interval, integer=name in integers)


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(field, value, f"must be one of {', '.join(map(str, choices))}")


def check_device(field: str, value: Any, *, indexed: bool = True) -> None:
    """``cpu``, ``cuda`` (or ``cuda:N`` when ``indexed``), ``mps``, ``auto``."""
    pattern = r"^(auto|cpu|mps|cuda" + (r"(:\d+)?" if indexed else "") + r")$"
    if not isinstance(value, str) or not re.match(pattern, value):
        raise ConfigError(field, value, "must be auto, cpu, cuda" + (", cuda:N" if indexed else "") + " or mps")


def check_dtype(field: str, value: Any) -> None:
    """``None``, ``auto`` or a name of :data:`promptloop.devices.DTYPES`."""
    from promptloop.devices import DTYPES

    if value is not None and value != "auto" and value not in DTYPES:
        raise ConfigError(field, value, f"must be auto or one of {', '.join(DTYPES)}")


def check_schedule(field: str, value: Any, *, refine: bool = False) -> None:
    """A refine schedule spec (:meth:`promptloop.schedule.RefineSchedule.parse`) or ``oneshot``;
    ``refine``: it must refine at least once (training needs actions)."""
    from promptloop.oneshot import is_oneshot
    from promptloop.schedule import RefineSchedule

    if is_oneshot(value):
        return
    try:
        schedule = RefineSchedule.parse(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, value, str(exc).removeprefix(f"bad schedule {value!r}: ")) from None
    if refine and not schedule:
        raise ConfigError(field, value, "refines nowhere: the policy would never act")


# -- inputs: prompt sets, rewards, models ----------------------------------------------------------
def check_prompts(field: str, spec: Any) -> None:
    """A prompt set :func:`promptloop.prompts.load_prompts` resolves to at least one prompt."""
    from promptloop.prompts import USAGE, load_prompts

    if not isinstance(spec, (str, list, tuple)):
        raise ConfigError(field, spec, "must be a prompt-set name, a text file or a list of prompts")
    try:
        prompts = load_prompts(spec)
    except FileNotFoundError:
        raise ConfigError(field, spec, f"no such prompt file (or use {USAGE})") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, spec, str(exc)) from None
    if not prompts:
        raise ConfigError(field, spec, "holds no prompts")


def check_rewards(field: str, spec: Any, options: Mapping[str, Any] | None = None,
                  options_field: str = "reward_options") -> None:
    """Every reward of ``spec`` (a weighted spec string such as ``"clip:1,aesthetic:0.5"``, a
    mapping name -> weight, or a list of names) is registered, weights are finite, and
    ``options`` give only keyword options the reward factories take, naming existing local paths."""
    import inspect

    from promptloop.rewards.registry import available_rewards, parse_reward_spec, reward_factory

    try:
        if isinstance(spec, (list, tuple)):
            weights = {str(name): 1.0 for name in spec}
        else:
            weights = parse_reward_spec(spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, spec, str(exc)) from None
    registered = available_rewards()
    for name, weight in weights.items():
        if name not in registered:
            raise ConfigError(field, spec, f"unknown reward {name!r}; registered: {', '.join(registered)}")
        if not math.isfinite(weight):
            raise ConfigError(field, spec, f"the weight of {name!r} must be finite")
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise ConfigError(options_field, options, "must map reward names to their options")
    for name, opts in options.items():
        where = f"{options_field}.{name}"
        if name not in weights:
            raise ConfigError(where, opts, f"{name!r} is not a reward of {field} ({', '.join(weights)})")
        if not isinstance(opts, Mapping):
            raise ConfigError(where, opts, "must be a mapping of keyword options")
        params = inspect.signature(reward_factory(name)).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for key, value in opts.items():
            if not takes_any and key not in params:
                raise ConfigError(f"{where}.{key}", value,
                                  f"not an option of the {name!r} reward (options: {', '.join(params) or 'none'})")
            if isinstance(value, str) and not Path(value).expanduser().exists() and looks_local(value):
                raise ConfigError(f"{where}.{key}", value, "no such local file or folder")


def looks_local(spec: str) -> bool:
    """Whether a name that is not an existing path was meant as a local path rather than a hub id:
    it starts with ``/``, ``.`` or ``~``, holds a backslash or more than one ``/``, is not a valid
    hub id, or its first part is an existing folder (``runs/missing`` when ``runs/`` exists)."""
    text = str(spec)
    if text.startswith(("/", ".", "~")) or "\\" in text or (os.sep != "/" and os.sep in text):
        return True
    if not _HUB_ID.match(text) or "--" in text or ".." in text or text.endswith((".", "-")):
        return True
    return "/" in text and Path(text.split("/", 1)[0]).is_dir()


def check_model(field: str, spec: Any, *, kind: str) -> None:
    """A model spec that can be loaded, without loading it.

    ``kind``: ``backbone`` (``tiny:<family>``, a diffusers folder with ``model_index.json``, or a
    hub id), ``policy`` (``tiny``, ``tiny-warm``, a folder with ``config.json``, or a hub id),
    ``adapter`` (a folder or file, or a hub id) or ``folder`` (a local folder only).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(field, spec, "must be a non-empty string")
    if kind == "backbone" and spec.startswith("tiny:"):
        from promptloop.testing.diffusion import FAMILIES

        if spec.split(":", 1)[1] not in FAMILIES:
            raise ConfigError(field, spec, f"unknown tiny family; use tiny:{', tiny:'.join(FAMILIES)}")
        return
    if kind == "policy" and spec in ("tiny", "tiny-warm"):
        return
    if kind != "folder":  # ``shapes:backbone-a``: a world's shipped asset
        from promptloop.worlds import resolve_asset

        try:
            spec = resolve_asset(spec, kind) or spec
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(field, spec, str(exc)) from None
    path = Path(spec).expanduser()
    if not path.exists():
        if kind == "folder":
            raise ConfigError(field, spec, "no such folder")
        if looks_local(spec):
            raise ConfigError(field, spec, "no such local path (a hub id looks like org/name)")
        return  # a hub id: fetched (and checked) by the hub client
    needs = {"backbone": "model_index.json", "policy": "config.json"}.get(kind)
    if kind == "folder" and not path.is_dir():
        raise ConfigError(field, spec, "is not a folder")
    if needs and not (path / needs).is_file():
        raise ConfigError(field, spec, f"is not a saved {kind} folder (no {needs})")


__all__ = ["ConfigError", "check_choice", "check_device", "check_dtype", "check_model", "check_number",
           "check_prompts", "check_ranges", "check_rewards", "check_schedule", "exit_on_config_error",
           "looks_local"]
