"""``promptloop eval``: score backbones, tuned backbones and PromptLoop policies side by side.

Rows (:class:`EvalRow`) are sampled on the same prompts and the same noise (:class:`EvalSettings`),
one cell per (row, sampling seed), scored per image with rewards from the registry and extra
metrics; cells are saved and reused; :func:`evaluate` writes a markdown table, a CSV, a bar plot
with 95 % intervals and trace strips. See docs/evaluation.md.
"""

from promptloop.evaluation.cells import Cell, compute_cell, image_seed, load_cell
from promptloop.evaluation.intervals import Interval, t_interval, t_quantile
from promptloop.evaluation.report import (
    Summary,
    costs,
    markdown_table,
    plot_rewards,
    summarize,
    write_csv,
    write_report,
)
from promptloop.evaluation.rows import EvalRow, standard_rows
from promptloop.evaluation.runner import EvalReport, evaluate, load_row_models
from promptloop.evaluation.settings import EvalSettings, Metric

__all__ = [
    "Cell",
    "EvalReport",
    "EvalRow",
    "EvalSettings",
    "Interval",
    "Metric",
    "Summary",
    "compute_cell",
    "costs",
    "evaluate",
    "image_seed",
    "load_cell",
    "load_row_models",
    "markdown_table",
    "plot_rewards",
    "standard_rows",
    "summarize",
    "t_interval",
    "t_quantile",
    "write_csv",
    "write_report",
]
