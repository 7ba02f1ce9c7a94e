"""The YAML file of ``promptloop eval --config``: ``rows`` and ``settings``.

.. code-block:: yaml

    settings:                      # EvalSettings fields
      prompts: shapes-heldout:32
      seeds: [0, 1, 2]
      rewards: [shapes, shapes_fidelity]
      num_inference_steps: 20
      guidance_scale: 4.0
    rows:                          # EvalRow fields; a list, or a mapping name -> fields
      - {name: backbone, backbone: promptloop/assets/shapesworld/backbone-a}
      - {name: loop, backbone: promptloop/assets/shapesworld/backbone-a,
         policy: promptloop/assets/shapesworld/policy-sft, schedule: "evenly:2"}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from promptloop.evaluation.report import INSTALL_HINT
from promptloop.evaluation.rows import EvalRow
from promptloop.evaluation.settings import EvalSettings


def _known(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    return data


def parse_rows(raw: Any) -> list[EvalRow]:
    """Rows from a list of mappings or a mapping ``name -> fields``."""
    if isinstance(raw, dict):
        raw = [{"name": name, **(fields or {})} for name, fields in raw.items()]
    if not isinstance(raw, list):
        raise ValueError("rows: expected a list of rows or a mapping name -> fields")
    return [EvalRow(**_known(EvalRow, dict(item), f"row {i}")) for i, item in enumerate(raw)]


def load_eval_config(path: str | Path) -> tuple[list[EvalRow], dict[str, Any]]:
    """The rows and the raw settings mapping (``EvalSettings`` fields) of a YAML file."""
    try:
        import yaml
    except ImportError:
        raise ImportError(f"reading --config needs pyyaml: {INSTALL_HINT}") from None
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or set(data) - {"rows", "settings"}:
        raise ValueError(f"{path}: expected top-level keys 'rows' and 'settings'")
    rows = parse_rows(data.get("rows") or [])
    settings = _known(EvalSettings, dict(data.get("settings") or {}), "settings")
    if "metrics" in settings:
        raise ValueError("settings.metrics: metrics are Python callables; use the Python API for them")
    return rows, settings
