"""The report of the ShapesWorld experiment: the table (markdown + CSV), paired comparisons with
95 % intervals and effect sizes, the cost of each trained row, the training curves, the bar plot
and the before/after trace strips."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path

from promptloop.training.shapes.experiment_eval import ATTRIBUTES, run_evaluation
from promptloop.training.shapes.jobs import ExperimentSettings, TrainingJob, curves

#: Row labels, ``{a}`` the backbone trained on and ``{b}`` the one generalised to.
_LABEL_TEMPLATES: dict[str, str] = {
    "a": "(a) backbone {a} alone",
    "a-sft": "(a') SFT policy, step-wise, no RL",
    "a-sft-oneshot": "(a'1) SFT policy, one-shot, no RL",
    "b": "(b) one-shot rewrite, GRPO",
    "c-sync": "(c) step-wise, GRPO, sync",
    "c-async": "(c) step-wise, GRPO, async",
    "c-ahead": "(c) step-wise, GRPO, ahead",
    "a-B": "backbone {b} alone",
    "d": "(d) (c) policy on backbone {b}",
    "e": "(e) DDPO-tuned backbone {a}",
    "e+c": "(e) DDPO-tuned {a} + (c) policy",
}
#: The labels with the default backbones A and B.
LABELS: dict[str, str] = {name: text.format(a="A", b="B") for name, text in _LABEL_TEMPLATES.items()}


def label(name: str, settings: ExperimentSettings | None = None) -> str:
    """The row's label, with the backbones named as in ``settings`` (A and B by default)."""
    if settings is None:
        return LABELS[name]
    first, second = settings.backbone_names
    return _LABEL_TEMPLATES[name].format(a=first, b=second)


#: Which row each row is compared with (same prompts, same noise).
BASELINE = {name: ("a-B" if name in ("d", "a-B") else "a") for name in LABELS}
#: Trained rows and the training runs they cost.
TRAINED = {"b": "grpo-oneshot", "c-sync": "grpo-stepwise", "e": "ddpo"}
#: Pairs compared head to head: (row, reference).
COMPARISONS = (("c-sync", "b"), ("c-sync", "a-sft"), ("b", "a-sft-oneshot"), ("c-async", "c-sync"),
               ("c-ahead", "c-sync"), ("e+c", "e"), ("d", "a-B"))
SCORES = ("shapes",) + ATTRIBUTES + ("shapes_fidelity",)


def group_of(row: str) -> str:
    """``c-sync.seed1`` -> ``c-sync``."""
    return row.split(".seed")[0]


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    from promptloop.evaluation import t_interval

    iv = t_interval(list(values))
    return iv.mean, iv.low, iv.high


def _paired(cells_by_row: dict, row_names: Sequence[str], ref_names: Sequence[str], score: str) -> dict:
    """Paired difference ``row - ref`` over the same images: per unit (training seed, else
    sampling seed) mean difference -> mean and 95 % interval; d_z over all image pairs."""
    units, diffs = [], []
    for row, ref in zip(row_names, ref_names):
        per_row = []
        for seed, cell in cells_by_row[row].items():
            base = cells_by_row[ref][seed]
            pairs = [(x, y) for x, y in zip(cell.values[score], base.values[score]) if x is not None and y is not None]
            d = [x - y for x, y in pairs]
            diffs += d
            if d:
                per_row.append(sum(d) / len(d))
        units.append(per_row)
    per_unit = [sum(u) / len(u) for u in units if u] if len(units) > 1 else (units[0] if units else [])
    mean, low, high = _interval(per_unit) if per_unit else (math.nan,) * 3
    sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    return {"mean": mean, "ci_low": low, "ci_high": high, "n_units": len(per_unit), "n_pairs": len(diffs),
            "d_z": (sum(diffs) / len(diffs)) / sd if diffs and sd and not math.isnan(sd) else math.nan}


def _members(groups: dict[str, list[str]], name: str) -> list[str]:
    return sorted(groups.get(name, []))


def _ref_rows(groups: dict[str, list[str]], rows: list[str], ref: str) -> list[str]:
    """The reference row matching each row: the same training seed when the reference is trained."""
    refs = _members(groups, ref)
    if len(refs) == 1:
        return refs * len(rows)
    by_seed = {r.split(".seed")[-1]: r for r in refs}
    return [by_seed[r.split(".seed")[-1]] for r in rows]


def write_report(settings: ExperimentSettings, jobs: Sequence[TrainingJob], out: Path, *, report=None,
                 echo=print) -> dict:
    """Write ``results.md``, ``results.csv``, ``summary.json``, ``rewards.png``, ``curves.png`` and
    ``strip_before.png`` / ``strip_after.png`` under ``out`` from the evaluation ``report`` (by
    default: the saved cells, evaluating what is missing); return the summary."""
    from promptloop.evaluation import costs as cell_costs
    from promptloop.evaluation import plot_rewards, summarize

    if report is None:
        report = run_evaluation(settings, jobs, out, echo=echo)
    cells = report.cells
    cells_by_row: dict[str, dict[int, object]] = {}
    for cell in cells:
        cells_by_row.setdefault(cell.row, {})[cell.seed] = cell
    groups: dict[str, list[str]] = {}
    for row in cells_by_row:
        groups.setdefault(group_of(row), []).append(row)

    # the table: an interval over training seeds for trained rows, over sampling seeds otherwise
    summaries = []
    for name, rows in groups.items():
        unit = "row" if len(rows) > 1 else "cell"
        summaries += summarize([c for c in cells if group_of(c.row) == name], group_of, names=list(SCORES), unit=unit)
    lookup = {(s.row, s.reward): s for s in summaries}
    deltas = {name: _paired(cells_by_row, _members(groups, name), _ref_rows(groups, _members(groups, name), BASELINE[name]),
                            "shapes")
              for name in groups if name in BASELINE and BASELINE[name] in groups and name != BASELINE[name]}
    comparisons = {f"{a} vs {b}": _paired(cells_by_row, _members(groups, a), _ref_rows(groups, _members(groups, a), b), "shapes")
                   for a, b in COMPARISONS if a in groups and b in groups}

    # costs of the trained rows (g)
    costs = {}
    for row, prefix in TRAINED.items():
        runs = [j for j in jobs if j.name.startswith(prefix + "-seed") and j.costs_file.exists()]
        if not runs or row not in groups:
            continue
        per_run = [json.loads(j.costs_file.read_text()) for j in runs]
        mean_costs = {k: statistics.fmean(float(c[k]) for c in per_run)
                      for k in ("images", "denoising_steps", "policy_tokens", "cpu_s", "wall_s")}
        gain = deltas.get(row, {}).get("mean", math.nan)
        mean_costs["gain_vs_a"] = gain
        mean_costs["gain_per_1000_images"] = gain / mean_costs["images"] * 1000 if mean_costs["images"] else math.nan
        costs[row] = mean_costs
    inference = {name: {"policy_tokens_per_image": total["policy_tokens"] / (total["images"] or 1),
                        "seconds_per_image": total["wall_s"] / (total["images"] or 1)}
                 for name, total in cell_costs(cells, group_of).items()}

    curve_data = {prefix: {j.seed: curves(j) for j in jobs if j.name.startswith(prefix + "-seed") and
                           (j.out / "metrics.jsonl").exists()}
                  for prefix in ("grpo-oneshot", "grpo-stepwise")}
    summary = {"settings": dataclasses.asdict(settings),
               "rows": {name: {s: {"mean": lookup[(name, s)].mean, "ci_low": lookup[(name, s)].ci_low,
                                   "ci_high": lookup[(name, s)].ci_high, "n": lookup[(name, s)].n_seeds,
                                   "images": lookup[(name, s)].n_images}
                               for s in SCORES if (name, s) in lookup} for name in groups},
               "delta_vs_baseline": deltas, "comparisons": comparisons, "training_costs": costs,
               "inference_costs": inference, "curves": curve_data}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    _write_markdown(out / "results.md", settings, groups, lookup, deltas, comparisons, costs, inference)
    _write_csv(out / "results.csv", settings, groups, lookup, deltas)
    plot_rewards([s for s in summaries if s.reward in ("shapes", "shapes_fidelity")], out / "rewards.png",
                 title="ShapesWorld: exact reward and held-out fidelity (95% CI)")
    _plot_curves(curve_data, out / "curves.png")
    strips = out / "eval" / "strips"
    for src, dst in (("a-sft.png", "strip_before.png"), (f"c-sync.seed{settings.train_seeds[0]}.png", "strip_after.png")):
        if (strips / src).exists():
            shutil.copyfile(strips / src, out / dst)
    echo((out / "results.md").read_text())
    return summary


def _fmt(s) -> str:
    if s is None:
        return "–"
    return f"{s.mean:.3f}" if math.isnan(s.half_width) else f"{s.mean:.3f} ± {s.half_width:.3f}"


def _fmt_delta(d: dict) -> str:
    if not d or math.isnan(d["mean"]):
        return "–"
    hw = (d["ci_high"] - d["ci_low"]) / 2
    ci = "" if math.isnan(hw) else f" ± {hw:.3f}"
    return f"{d['mean']:+.3f}{ci} (d_z {d['d_z']:+.2f})"


def _write_markdown(path: Path, settings, groups, lookup, deltas, comparisons, costs, inference) -> None:
    order = [n for n in LABELS if n in groups]
    # attributes no held-out prompt constrains (e.g. size: user prompts never state it) are left out
    attributes = [a for a in ATTRIBUTES if any((n, a) in lookup for n in order)]
    head = ["row", "reward", "Δ vs baseline", *(a.removeprefix("shapes_") for a in attributes),
            "fidelity (held out)", "n"]
    lines = ["# ShapesWorld alignment experiment", "",
             (f"Held-out prompts: {settings.eval_prompts}; sampling seeds: {settings.eval_seeds}; training seeds: "
              f"{settings.train_seeds}; GRPO steps: {settings.grpo_steps}; DDPO epochs: {settings.ddpo_steps}."),
             ("Mean ± half-width of the 95 % t-interval: over training seeds for trained rows, over sampling "
              f"seeds otherwise. Δ: paired difference with the baseline row (backbone alone; backbone {settings.backbone_names[1]} for "
              "(d)) on the same prompts and noise, with d_z over image pairs."), "",
             "| " + " | ".join(head) + " |", "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    for name in order:
        n = lookup[(name, "shapes")].n_seeds if (name, "shapes") in lookup else 0
        cells = [_fmt(lookup.get((name, "shapes"))), _fmt_delta(deltas.get(name, {})),
                 *[_fmt(lookup.get((name, a))) for a in attributes], _fmt(lookup.get((name, "shapes_fidelity"))), str(n)]
        lines.append(f"| {label(name, settings)} | " + " | ".join(cells) + " |")
    lines += ["", "## Head to head (paired, same prompts and noise)", "", "| comparison | Δ reward | units | image pairs |",
              "| --- | ---: | ---: | ---: |"]
    for key, d in comparisons.items():
        lines.append(f"| {key} | {_fmt_delta(d)} | {d['n_units']} | {d['n_pairs']} |")
    lines += ["", "## Cost of the trained rows (mean per training run)", "",
              "| row | sampled images | denoising steps | policy tokens | CPU s | wall s | Δ vs (a) | Δ per 1,000 images |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row, c in costs.items():
        lines.append(f"| {label(row, settings)} | {c['images']:.0f} | {c['denoising_steps']:.0f} | {c['policy_tokens']:.0f} | "
                     f"{c['cpu_s']:.0f} | {c['wall_s']:.0f} | {c['gain_vs_a']:+.3f} | {c['gain_per_1000_images']:+.4f} |")
    lines += ["", "## Inference cost per image (evaluation)", "",
              "Seconds are wall time on the machine as it was loaded at the time (indicative only).", "",
              "| row | policy tokens / image | seconds / image |",
              "| --- | ---: | ---: |"]
    for name in order:
        c = inference[name]
        lines.append(f"| {label(name, settings)} | {c['policy_tokens_per_image']:.1f} | {c['seconds_per_image']:.3f} |")
    path.write_text("\n".join(lines) + "\n")


def _write_csv(path: Path, settings, groups, lookup, deltas) -> None:
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "label", "score", "mean", "ci_low", "ci_high", "n", "images"])
        for name in [n for n in LABELS if n in groups]:
            for score in SCORES:
                s = lookup.get((name, score))
                if s is not None:
                    w.writerow([name, label(name, settings), score, s.mean, s.ci_low, s.ci_high, s.n_seeds, s.n_images])
            d = deltas.get(name)
            if d:
                w.writerow([name, label(name, settings), "delta_shapes_vs_baseline", d["mean"], d["ci_low"], d["ci_high"],
                            d["n_units"], d["n_pairs"]])


def _plot_curves(curve_data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2))
    for prefix, label in (("grpo-oneshot", "(b) one-shot"), ("grpo-stepwise", "(c) step-wise")):
        runs = curve_data.get(prefix, {})
        if not runs:
            continue
        steps = sorted({p["step"] for pts in runs.values() for p in pts})
        for ax, key in zip(axes, ("reward", "fidelity")):
            means, lows, highs = [], [], []
            for step in steps:
                vals = [p[key] for pts in runs.values() for p in pts if p["step"] == step and p[key] is not None]
                m, lo, hi = _interval(vals) if vals else (math.nan,) * 3
                means.append(m)
                lows.append(m if math.isnan(lo) else lo)
                highs.append(m if math.isnan(hi) else hi)
            ax.plot(steps, means, marker="o", label=label)
            ax.fill_between(steps, lows, highs, alpha=0.2)
    axes[0].set_title("held-out exact reward")
    axes[1].set_title("held-out fidelity (never trained on)")
    for ax in axes:
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
