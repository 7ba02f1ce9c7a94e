"""Aggregates of evaluation cells and the files that show them.

:func:`summarize` gives, per row (or per group of rows) and per reward/metric, the mean over
units and its 95 % t-interval. A unit is one cell (one sampling seed of one row): each cell's mean
over its images comes first, then the mean over cells. ``group`` pools rows into one line (e.g.
three training seeds of one method); ``unit="row"`` then averages each row's cells first and
takes the interval over rows (the spread between training seeds).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from promptloop.evaluation.cells import Cell
from promptloop.evaluation.intervals import t_interval

CSV_FIELDS = ("row", "reward", "mean", "ci_low", "ci_high", "n_seeds", "n_images")
COST_FIELDS = ("images", "denoising_steps", "policy_calls", "policy_generations", "policy_tokens", "wall_s")
INSTALL_HINT = 'pip install "promptloop[eval]" (in a checkout: bash scripts/install.sh)'


@dataclass(frozen=True)
class Summary:
    """One (row or group, reward/metric) line: mean, 95 % interval, interval units (``n_seeds``:
    cells, or rows with ``unit="row"``) and images scored."""

    row: str
    reward: str
    mean: float
    ci_low: float
    ci_high: float
    n_seeds: int
    n_images: int

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def _ordered_groups(cells: Sequence[Cell], group: Callable[[str], str] | None) -> dict[str, list[Cell]]:
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(group(cell.row) if group else cell.row, []).append(cell)
    return groups


def summarize(cells: Sequence[Cell], group: Callable[[str], str] | None = None, *,
              names: Sequence[str] | None = None, unit: str = "cell", confidence: float = 0.95) -> list[Summary]:
    """Per group (default: per row) and per reward/metric: mean over units and its t-interval.

    ``group`` maps a row name to its line's name (rows mapped to the same name are pooled);
    ``names`` limits and orders the rewards/metrics (default: those of the first cell). Cells
    where a metric applies to no image are left out for that metric.
    """
    if unit not in ("cell", "row"):
        raise ValueError(f"unit must be 'cell' or 'row', got {unit!r}")
    if not cells:
        return []
    names = list(names or cells[0].values)
    out = []
    for label, members in _ordered_groups(cells, group).items():
        for name in names:
            per_cell = [(c.row, c.mean(name), c.count(name)) for c in members if name in c.values]
            per_cell = [(r, m, k) for r, m, k in per_cell if m is not None]
            if not per_cell:
                continue
            if unit == "row":
                by_row: dict[str, list[float]] = {}
                for r, m, _ in per_cell:
                    by_row.setdefault(r, []).append(m)
                units = [sum(v) / len(v) for v in by_row.values()]
            else:
                units = [m for _, m, _ in per_cell]
            interval = t_interval(units, confidence)
            out.append(Summary(label, name, interval.mean, interval.low, interval.high, interval.n,
                               sum(k for _, _, k in per_cell)))
    return out


def costs(cells: Sequence[Cell], group: Callable[[str], str] | None = None) -> dict[str, dict[str, float]]:
    """Total costs per group (default: per row) over its cells."""
    totals: dict[str, dict[str, float]] = {}
    for label, members in _ordered_groups(cells, group).items():
        totals[label] = {k: round(sum(float(c.costs.get(k, 0)) for c in members), 3) for k in COST_FIELDS}
    return totals


def _fmt(summary: Summary, digits: int) -> str:
    if math.isnan(summary.ci_low):
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.half_width:.{digits}f}"


def markdown_table(summaries: Sequence[Summary], *, digits: int = 3) -> str:
    """Rows by rewards/metrics, each cell ``mean ± half-width`` of the 95 % interval."""
    rows = list(dict.fromkeys(s.row for s in summaries))
    names = list(dict.fromkeys(s.reward for s in summaries))
    lookup = {(s.row, s.reward): s for s in summaries}
    seeds = {r: max((s.n_seeds for s in summaries if s.row == r), default=0) for r in rows}
    lines = ["| row | " + " | ".join(names) + " | n |", "| --- | " + " | ".join("---:" for _ in names) + " | ---: |"]
    for r in rows:
        values = [_fmt(lookup[(r, n)], digits) if (r, n) in lookup else "–" for n in names]
        lines.append(f"| {r} | " + " | ".join(values) + f" | {seeds[r]} |")
    return "\n".join(lines)


def costs_table(totals: dict[str, dict[str, float]]) -> str:
    lines = ["| row | " + " | ".join(COST_FIELDS) + " |", "| --- | " + " | ".join("---:" for _ in COST_FIELDS) + " |"]
    for label, values in totals.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[k]:g}" for k in COST_FIELDS) + " |")
    return "\n".join(lines)


def write_csv(summaries: Sequence[Summary], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for s in summaries:
            writer.writerow(asdict(s))
    return path


def plot_rewards(summaries: Sequence[Summary], path: str | Path, *, title: str = "") -> Path:
    """A bar plot: one group of bars per reward/metric, one bar per row, 95 % error bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"the reward plot needs matplotlib: {INSTALL_HINT}") from None
    rows = list(dict.fromkeys(s.row for s in summaries))
    names = list(dict.fromkeys(s.reward for s in summaries))
    lookup = {(s.row, s.reward): s for s in summaries}
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + len(names) * (0.5 + 0.35 * len(rows))), 3.6))
    for k, r in enumerate(rows):
        xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(names))]
        means = [lookup[(r, n)].mean if (r, n) in lookup else math.nan for n in names]
        errs = [lookup[(r, n)].half_width if (r, n) in lookup and not math.isnan(lookup[(r, n)].ci_low) else 0.0
                for n in names]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=r)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("mean (95% CI)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(cells: Sequence[Cell], out_dir: str | Path, *, group: Callable[[str], str] | None = None,
                 unit: str = "cell", names: Sequence[str] | None = None, title: str = "PromptLoop evaluation",
                 note: str = "") -> list[Summary]:
    """Write ``results.md`` (means ± 95 % half-widths, then costs), ``results.csv`` and
    ``rewards.png`` under ``out_dir``; return the summaries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize(cells, group, names=names, unit=unit)
    text = [f"# {title}", ""]
    if note:
        text += [note, ""]
    text += [markdown_table(summaries), "",
             (f"Mean ± half-width of the 95 % t-interval over {'rows' if unit == 'row' else 'sampling seeds (cells)'}; "
              "n: interval units."), "", "## Costs (totals over cells)", "", costs_table(costs(cells, group)), ""]
    (out_dir / "results.md").write_text("\n".join(text))
    write_csv(summaries, out_dir / "results.csv")
    plot_rewards(summaries, out_dir / "rewards.png", title=title)
    return summaries
