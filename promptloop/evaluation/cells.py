"""One cell of an evaluation: all prompts of one row sampled with one seed, scored per image.

A cell is saved as ``cells/<row>__seed<k>.json``: per-image values of every reward and metric, the
final prompts, and what it cost. A saved cell whose fingerprint (row, settings, seed and the
files of local model folders) matches is reused instead of recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from promptloop.evaluation.rows import EvalRow
from promptloop.evaluation.settings import EvalSettings
from promptloop.rollout import (
    NOISE_STRIDE,  # noqa: F401 - the noise convention, re-exported here
    image_seed,
    sample,
)
from promptloop.trace import Trace

CELL_VERSION = 1


@dataclass
class Cell:
    """The result of one (row, seed): per-image ``values`` by reward/metric name (``None``: not
    applicable), the prompts, and ``costs`` (``wall_s``, ``policy_calls`` (batched calls),
    ``policy_generations``, ``policy_tokens``, ``denoising_steps``, ``images``)."""

    row: str
    seed: int
    prompts: list[str]
    final_prompts: list[str]
    values: dict[str, list[float | None]]
    costs: dict[str, float]
    fingerprint: str = ""
    spec: dict[str, Any] = field(default_factory=dict)

    def mean(self, name: str) -> float | None:
        """Mean of ``name`` over the images where it applies (``None`` if it applies to none)."""
        present = [v for v in self.values[name] if v is not None]
        return sum(present) / len(present) if present else None

    def count(self, name: str) -> int:
        """Images where ``name`` applies."""
        return sum(v is not None for v in self.values[name])

    def to_dict(self) -> dict[str, Any]:
        return {"version": CELL_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        data = {k: v for k, v in data.items() if k != "version"}
        return cls(**data)


def cell_path(out_dir: str | Path, row: str, seed: int) -> Path:
    return Path(out_dir) / "cells" / f"{row}__seed{int(seed)}.json"


def _files_signature(spec: str | None) -> list[Any] | None:
    """Names, sizes and modification times of a local folder's files (``None`` for hub ids and
    ``tiny`` specs), so a model retrained into the same folder is not mistaken for the old one."""
    if not spec or not os.path.exists(spec):
        return None
    root = Path(spec)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def cell_fingerprint(row: EvalRow, settings: EvalSettings, seed: int) -> str:
    """A hash of everything that decides the cell's values."""
    data = {
        "version": CELL_VERSION, "row": asdict(row), "seed": int(seed), "settings": settings.fingerprint_data(),
        "files": {k: _files_signature(getattr(row, k))
                  for k in ("backbone", "backbone_adapter", "policy", "policy_adapter")},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_cell(path: str | Path, fingerprint: str) -> Cell | None:
    """The saved cell at ``path`` if it exists and was computed with ``fingerprint``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        cell = Cell.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    return cell if cell.fingerprint == fingerprint else None


def save_cell(cell: Cell, path: str | Path) -> Path:
    """Write the cell atomically (a half-written file is never taken for a finished cell)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cell.to_dict(), indent=1))
    os.replace(tmp, path)
    return path


def sample_batch(pipe: Any, policy: Any, row: EvalRow, settings: EvalSettings, prompts: list[str],
                 noise_seeds: list[int], *, keep_previews: bool = False) -> tuple[list[Image.Image], Trace]:
    """Images of ``prompts`` (image ``j`` from noise seed ``noise_seeds[j]``) as the row samples
    them, and the trace (:func:`promptloop.rollout.sample` with the row's and the settings' options)."""
    return sample(pipe, prompts, noise_seeds, policy=policy, schedule=row.schedule, mode=row.mode,
                  preview=settings.preview, preview_size=settings.preview_size,
                  num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                  height=settings.height, width=settings.width, timeout_s=settings.timeout_s,
                  keep_previews=keep_previews)


def score_images(images: list[Image.Image], prompts: list[str], final_prompts: list[str],
                 settings: EvalSettings, rewards: dict[str, Any]) -> dict[str, list[float | None]]:
    """Every reward and metric of ``settings`` per image (rewards get the original prompts)."""
    metadata = [{"final_prompt": f, "original_prompt": p} for f, p in zip(final_prompts, prompts)]
    values: dict[str, list[float | None]] = {}
    for name in settings.rewards:
        values[name] = [float(v) for v in rewards[name](images, prompts, metadata)]
    for name, metric in settings.metrics.items():
        values[name] = [None if v is None else float(v) for v in metric(images, prompts)]
    for name, got in values.items():
        if len(got) != len(images):
            raise ValueError(f"{name!r} returned {len(got)} values for {len(images)} images")
    return values


def _subtrace(trace: Trace, count: int) -> Trace:
    """The first ``count`` samples of a trace."""
    return Trace(original_prompts=trace.original_prompts[:count],
                 entries=[e for e in trace.entries if e.sample_index < count], meta=dict(trace.meta))


def compute_cell(pipe: Any, policy: Any, row: EvalRow, settings: EvalSettings, seed: int,
                 rewards: dict[str, Any], *, strip_path: str | Path | None = None) -> Cell:
    """Sample every prompt of ``settings`` for ``row`` with ``seed``, in batches of
    ``settings.batch_size``, and score them. With ``strip_path`` the trace strip of the first
    ``settings.num_strips`` prompts is written there."""
    prompts = list(settings.prompts)
    if policy is not None and settings.temperature > 0 and hasattr(policy, "sampling"):
        import dataclasses

        policy.sampling = dataclasses.replace(policy.sampling, seed=int(seed))
    images: list[Image.Image] = []
    finals: list[str] = []
    calls = generations = tokens = 0
    strip = None
    start = time.perf_counter()
    for begin in range(0, len(prompts), settings.batch_size):
        chunk = prompts[begin:begin + settings.batch_size]
        want_strip = strip_path is not None and begin == 0 and settings.num_strips > 0
        got, trace = sample_batch(pipe, policy, row, settings, chunk,
                                  [image_seed(seed, begin + j) for j in range(len(chunk))], keep_previews=want_strip)
        images += got
        finals += trace.final_prompts()
        calls += int(trace.meta.get("policy_calls", 0))
        used = trace.generations()
        generations, tokens = generations + len(used), tokens + sum(len(e.token_ids or []) for e in used)
        if want_strip:
            strip = _subtrace(trace, settings.num_strips).render_strip(images=got[:settings.num_strips])
    sampling_s = time.perf_counter() - start
    values = score_images(images, prompts, finals, settings, rewards)
    if strip is not None:
        Path(strip_path).parent.mkdir(parents=True, exist_ok=True)
        strip.save(strip_path)
    costs = {"wall_s": round(time.perf_counter() - start, 4), "sampling_s": round(sampling_s, 4),
             "policy_calls": calls, "policy_generations": generations, "policy_tokens": tokens,
             "denoising_steps": settings.num_inference_steps * len(images), "images": len(images)}
    return Cell(row=row.name, seed=int(seed), prompts=prompts, final_prompts=finals, values=values,
                costs=costs, fingerprint=cell_fingerprint(row, settings, seed), spec=asdict(row))
