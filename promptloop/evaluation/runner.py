"""Run an evaluation: every (row, seed) cell, reused when already computed, then the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptloop.evaluation import cells as cells_module
from promptloop.evaluation.cells import Cell, cell_fingerprint, cell_path, load_cell, save_cell
from promptloop.evaluation.report import Summary, markdown_table, summarize, write_report
from promptloop.evaluation.rows import EvalRow
from promptloop.evaluation.settings import EvalSettings


@dataclass
class EvalReport:
    """What :func:`evaluate` returns: every cell, the per-row summaries, and which cells were
    computed in this call (the others were reused from ``out_dir``)."""

    cells: list[Cell]
    summaries: list[Summary]
    out_dir: Path
    computed: list[tuple[str, int]] = field(default_factory=list)

    def summarize(self, group: Callable[[str], str] | None = None, *, unit: str = "cell") -> list[Summary]:
        """Summaries over other groupings of rows (see :func:`promptloop.evaluation.summarize`)."""
        return summarize(self.cells, group, unit=unit)

    def markdown(self) -> str:
        return markdown_table(self.summaries)


def load_row_models(row: EvalRow, settings: EvalSettings) -> tuple[Any, Any]:
    """The row's pipeline (with its LoRA, if any) and policy (with its adapter; ``None`` without)."""
    from promptloop.devices import default_device
    from promptloop.specs import load_backbone, policy_adapter_path, policy_base_path

    device = settings.device or default_device()
    pipe = load_backbone(row.backbone, device=device, dtype=settings.dtype)
    if row.backbone_adapter:
        if not Path(row.backbone_adapter).is_dir():
            raise FileNotFoundError(f"row {row.name!r}: backbone adapter folder {row.backbone_adapter} not found")
        pipe.load_lora_weights(row.backbone_adapter)
    policy = None
    if row.policy:
        from promptloop.policies import SamplingConfig, TransformersPolicy

        sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)
        policy = TransformersPolicy.from_pretrained(policy_base_path(row.policy), device=device,
                                                    dtype=settings.dtype, sampling=sampling)
        if row.policy_adapter:
            policy.add_adapter("default", policy_adapter_path(row.policy_adapter))
    return pipe, policy


def _rewards(settings: EvalSettings) -> dict[str, Any]:
    from promptloop.rewards.registry import get_reward

    return {name: get_reward(name, **dict(settings.reward_options.get(name, {}))) for name in settings.rewards}


def evaluate(rows: Sequence[EvalRow], settings: EvalSettings, out_dir: str | Path, *, progress: bool = True,
             group: Callable[[str], str] | None = None, write: bool = True) -> EvalReport:
    """Evaluate ``rows`` on ``settings``' prompts and seeds; results go to ``out_dir``.

    Each (row, seed) cell is saved as ``out_dir/cells/<row>__seed<k>.json`` and reused on the
    next call when its fingerprint matches, so an interrupted evaluation resumes. Models are
    loaded once per row, and not at all for a row whose cells are all reused. The trace strip
    ``out_dir/strips/<row>.png`` is drawn when the row's first-seed cell is computed. With
    ``write`` the report (``results.md``, ``results.csv``, ``rewards.png``) is written, its rows
    pooled by ``group`` if given.
    """
    from tqdm.auto import tqdm

    rows = list(rows)
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be distinct: {names}")
    out_dir = Path(out_dir)
    rewards: dict[str, Any] | None = None
    cells: list[Cell] = []
    computed: list[tuple[str, int]] = []
    bar = tqdm(total=len(rows) * len(settings.seeds), desc="eval cells", unit="cell", disable=not progress)
    try:
        for row in rows:
            fingerprints = {s: cell_fingerprint(row, settings, s) for s in settings.seeds}
            saved = {s: load_cell(cell_path(out_dir, row.name, s), fingerprints[s]) for s in settings.seeds}
            models = None
            for seed in settings.seeds:
                bar.set_postfix_str(f"{row.name} seed {seed}")
                cell = saved[seed]
                if cell is None:
                    if models is None:
                        models = load_row_models(row, settings)
                    if rewards is None:
                        rewards = _rewards(settings)
                    strip = out_dir / "strips" / f"{row.name}.png" if seed == settings.seeds[0] else None
                    cell = cells_module.compute_cell(models[0], models[1], row, settings, seed, rewards,
                                                     strip_path=strip)
                    save_cell(cell, cell_path(out_dir, row.name, seed))
                    computed.append((row.name, seed))
                cells.append(cell)
                bar.update(1)
            del models
    finally:
        bar.close()
    if write:
        summaries = write_report(cells, out_dir, group=group, names=settings.score_names)
    else:
        summaries = summarize(cells, group, names=settings.score_names)
    return EvalReport(cells, summaries, out_dir, computed)
