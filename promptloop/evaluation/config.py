"""The YAML file of ``promptloop eval --config``: ``rows`` and ``settings``.

.. code-block:: yaml

    settings:                      # EvalSettings fields
      prompts: shapes-heldout:32
      seeds: [0, 1, 2]
      rewards: [shapes, shapes_fidelity]
      num_inference_steps: 20
      guidance_scale: 4.0
    rows:                          # EvalRow fields; a list, or a mapping name -> fields
      - {name: backbone, backbone: "shapes:backbone-a"}      # a world's shipped asset, or a folder
      - {name: loop, backbone: "shapes:backbone-a", policy: "shapes:policy-sft", schedule: "evenly:2"}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptloop.evaluation.report import INSTALL_HINT
from promptloop.evaluation.rows import MODES, EvalRow
from promptloop.evaluation.settings import EvalSettings
from promptloop.sampling import check_sampling
from promptloop.validation import (
    ConfigError,
    check_choice,
    check_device,
    check_dtype,
    check_model,
    check_prompts,
    check_ranges,
    check_rewards,
    check_schedule,
)

#: Interval of every numeric :class:`EvalSettings` field besides the sampling ones, which
#: :func:`~promptloop.sampling.check_sampling` checks (``None`` values are allowed where the field is).
SETTINGS_RANGES = {"batch_size": ">= 1", "num_strips": ">= 0", "max_new_tokens": ">= 1", "temperature": ">= 0",
                   "timeout_s": "> 0"}
_INTEGERS = ("batch_size", "num_strips", "max_new_tokens")


def _known(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    names = sorted(f.name for f in dataclasses.fields(cls))
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}", value, f"unknown field; known: {', '.join(names)}")
    return dict(data)


def parse_rows(raw: Any) -> list[EvalRow]:
    """Rows from a list of mappings or a mapping ``name -> fields``."""
    if isinstance(raw, dict):
        raw = [{"name": name, **(fields or {})} for name, fields in raw.items()]
    if not isinstance(raw, list):
        raise ConfigError("rows", raw, "expected a list of rows or a mapping name -> fields")
    rows = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise ConfigError(f"rows[{i}]", item, "expected a mapping of EvalRow fields")
        try:
            rows.append(EvalRow(**_known(EvalRow, item, f"rows[{i}]")))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"rows[{i}]", dict(item), str(exc).removeprefix("EvalRow.__init__() ")) from None
    return rows


def load_eval_config(path: str | Path) -> tuple[list[EvalRow], dict[str, Any]]:
    """The rows and the raw settings mapping (``EvalSettings`` fields) of a YAML file."""
    try:
        import yaml
    except ImportError:
        raise ImportError(f"reading --config needs pyyaml: {INSTALL_HINT}") from None
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(path), f"is not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict) or set(data) - {"rows", "settings"}:
        raise ConfigError("--config", str(path), "expected top-level keys 'rows' and 'settings'")
    rows = parse_rows(data.get("rows") or [])
    settings = _known(EvalSettings, dict(data.get("settings") or {}), "settings")
    if "metrics" in settings:
        raise ConfigError("settings.metrics", settings["metrics"],
                          "metrics are Python callables; use the Python API for them")
    return rows, settings


def check_eval(rows: Sequence[EvalRow], settings: Mapping[str, Any]) -> None:
    """Check the rows and the raw settings (``EvalSettings`` fields) of an evaluation before
    anything loads: ranges, choices, seeds, prompt files, reward names and options, and the rows'
    backbones, adapters and policies (local paths must exist; hub ids are left to the hub).

    Raises :class:`~promptloop.validation.ConfigError` naming the first bad field."""
    check_sampling(settings)
    check_ranges(settings, SETTINGS_RANGES, integers=_INTEGERS)
    seeds = settings.get("seeds")
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ConfigError("seeds", seeds, "must be a non-empty list of integers")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError("seeds", seeds, f"{seed!r} is not an integer >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", seeds, "must be distinct")
    if settings.get("device") is not None:
        check_device("device", settings["device"])
    check_dtype("dtype", settings.get("dtype"))
    names: set[str] = set()
    for row in rows:
        where = f"rows[{row.name}]"
        if row.name in names:
            raise ConfigError(where, row.name, "two rows have this name")
        names.add(row.name)
        check_choice(f"{where}.mode", row.mode, MODES)
        check_schedule(f"{where}.schedule", row.schedule)
        if row.backbone_adapter:
            check_model(f"{where}.backbone_adapter", row.backbone_adapter, kind="folder")
        if row.policy:
            check_model(f"{where}.policy", row.policy, kind="policy")
        if row.policy_adapter:
            check_model(f"{where}.policy_adapter", row.policy_adapter, kind="adapter")
    check_prompts("prompts", settings.get("prompts"))
    rewards = settings.get("rewards")
    if isinstance(rewards, str):
        rewards = [r.strip() for r in rewards.split(",") if r.strip()]
    if not isinstance(rewards, (list, tuple)) or not rewards:
        raise ConfigError("rewards", rewards, "must name at least one reward from the registry")
    check_rewards("rewards", list(rewards), settings.get("reward_options") or {})
    for row in rows:  # last: checking a tiny:<family> name imports diffusers
        check_model(f"rows[{row.name}].backbone", row.backbone, kind="backbone")
