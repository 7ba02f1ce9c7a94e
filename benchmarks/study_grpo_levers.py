"""Issue 21's lever study: each GRPO lever against GRPO without levers, on ShapesWorld backbone C
from the shipped SFT start, at the same image budget and the same seeds.

    nice -n 10 .venv/bin/python benchmarks/study_grpo_levers.py --out runs/grpo-levers      # run or resume, then summarise
    .venv/bin/python benchmarks/study_grpo_levers.py --out runs/grpo-levers --summarize-only

Arms (``ARMS``): ``off``; ``dynamic_sampling`` (``max_resample_batches: 2``); ``credit:
refinement``; ``loss_type: raft`` with 2 prompts x 8 rollouts (a unique best of 8 is less rare than
of 4; the same 16 images a step); ``replay`` (one prompt of four from the buffer of prompts whose
group mean reward was below 0.8); ``screened``, the recipe built after those five: offline difficulty
filtering of the first 1,024 training prompts (``screen_prompts``, their images reported beside the
budget), the inference schedule ``evenly:2``, unscaled advantages, dynamic sampling of groups whose
reward std reaches 0.02, 8 prompts x 8 rollouts a step; ``screened_reuse4``, the same with 4 optimiser
updates per rollout batch (``num_iterations``); ``screened_oneshot``, the same one-shot (trained and
evaluated with ``schedule: oneshot``, paired with the SFT start evaluated one-shot, run
``start_oneshot``). Every run is ``grpo_shapes.yaml`` with ``backbone-c``, ``share_noise: true``,
4 prompts x 4 rollouts unless the arm says otherwise, and stops when its summed ``train/images``
reaches ``--images`` (dynamic sampling spends more images a step, so it takes fewer steps). The
held-out evaluation (``shapes-heldout:32``, greedy, ``evenly:2`` or the arm's ``eval_schedule``, latents
fixed by the seed) runs every ``--eval-every`` images and at the end. Its latents depend on the
seed only, so the SFT start's held-out figures are measured once per seed (run ``start``) and are
every arm's step 0.

Each run is a child process (1 torch thread) in ``OUT/<arm>-seed<S>``; it checkpoints every 10 steps
and a rerun resumes the unfinished runs (finished ones have ``done.json``). Logged beside the
trainer's ``metrics.jsonl``: ``study/cpu_s`` (process CPU seconds of each step / evaluation) and,
per evaluation, ``eval/step-N.jsonl`` (each held-out prompt, its final prompt, reward, fidelity and
whether the final prompt is *degenerate*: drops or changes a stated shape, colour, position or
relation, ``study_grpo_tiny.degenerate``). The summary (``OUT/summary.md``, and a plot with
``--figure``) gives per arm: images, CPU seconds, the final held-out exact reward (mean over seeds,
95 % t-interval), its paired difference to the SFT start (per seed, then mean and interval), the
held-out fidelity and the share of degenerate final prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from promptloop.evaluation.intervals import Interval, t_interval

ROOT = Path(__file__).resolve().parents[1]

CONFIG = "training/configs/grpo_shapes.yaml"
BASE = {
    "backbone": "promptloop/assets/shapesworld/backbone-c",
    "share_noise": True,
    "per_device_prompts": 4,
    "num_generations": 4,
    "eval_prompts": "shapes-heldout:32",
    "eval_num_prompts": 32,
    "eval_schedule": "evenly:2",
    "eval_temperature": 0.0,
    "eval_on_start": False,
    "eval_steps": 1,  # asked every step; StudyTrainer evaluates only at the image marks
    "save_steps": 10,
    "save_total_limit": 1,
    "progress": False,
    "report_to": "none",
}
ARMS: dict[str, dict[str, Any]] = {
    "off": {},
    "dynamic_sampling": {"dynamic_sampling": True, "max_resample_batches": 2},
    "credit_refinement": {"credit": "refinement"},
    "raft": {"loss_type": "raft", "per_device_prompts": 2, "num_generations": 8},
    "replay": {"replay_fraction": 0.25, "replay_threshold": 0.8},
    # The recipe after the study above: screened prompts, the inference schedule, unscaled advantages,
    # groups with a real spread, 8 prompts x 8 rollouts a step.
    "screened": {"prompts": "shapes:1024", "screen_prompts": 1024, "screen_threshold": 0.9, "schedule": "evenly:2",
                 "scale_rewards": "none", "dynamic_sampling": True, "max_resample_batches": 1, "reward_tol": 0.02,
                 "per_device_prompts": 8, "num_generations": 8},
}
#: One-shot: the policy rewrites each prompt once before sampling, and is evaluated that way.
ONESHOT = {"schedule": "oneshot", "eval_schedule": "oneshot"}
ARMS["screened_oneshot"] = {**ARMS["screened"], **ONESHOT}
#: The screened recipe with 4 optimiser updates per rollout batch (PPO-style reuse, clipped ratio).
ARMS["screened_reuse4"] = {**ARMS["screened"], "num_iterations": 4}
START = "start"
#: Evaluation-only runs: the SFT start under the loop an arm is evaluated with (the arm's step 0).
STARTS: dict[str, dict[str, Any]] = {START: {}, "start_oneshot": ONESHOT}


def start_of(arm: str) -> str:
    """The start run an arm is paired with: the one evaluated at the arm's ``eval_schedule``."""
    return "start_oneshot" if ARMS.get(arm, {}).get("eval_schedule") == "oneshot" else START


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / f"{arm}-seed{seed}"


# -- one run (child process) ---------------------------------------------------------------------
def run_one(out: Path, arm: str, seed: int, images: int, eval_every: int) -> None:
    """Train (or, for ``start``, only evaluate) one arm at one seed, resuming a checkpoint."""
    import torch

    torch.set_num_threads(1)
    from promptloop.rewards import get_reward
    from promptloop.training.config import GRPOConfig, load_config
    from promptloop.training.grpo.trainer import GRPOTrainer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_grpo_tiny import degenerate  # a sibling script

    fidelity = get_reward("shapes_fidelity")

    class StudyTrainer(GRPOTrainer):
        """Stops at the image budget, evaluates at the image marks, logs CPU seconds and the
        held-out prompts one by one."""

        images = 0.0
        next_eval = float(eval_every)
        _batch = None

        def train_step(self, step: int) -> dict[str, float]:
            cpu = time.process_time()
            metrics = super().train_step(step)
            metrics["study/cpu_s"] = time.process_time() - cpu
            self.images += metrics.get("train/images", 0.0)
            if self.images >= images:
                self.config.max_steps = step + 1
            return metrics

        def heldout_rollout(self):  # the batch, kept for evaluate
            self._batch = super().heldout_rollout()
            return self._batch

        def evaluate(self, step: int) -> dict[str, float]:
            last = step >= self.config.max_steps
            if step > 0 and not last and self.images < self.next_eval:
                return {}
            while self.next_eval <= self.images:
                self.next_eval += eval_every
            cpu = time.process_time()
            metrics = super().evaluate(step)
            batch = self._batch
            finals = batch.trace.final_prompts()
            fid = fidelity(batch.images, batch.prompts, None)
            rows = [{"prompt": p, "final": f, "reward": r, "fidelity": x, "degenerate": degenerate(f, p)}
                    for p, f, r, x in zip(batch.prompts, finals, batch.rewards, fid, strict=True)]
            (self.runtime.output_dir / "eval" / f"step-{step}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows))
            self.runtime.log({"study/images": self.images, "study/cpu_s": time.process_time() - cpu,
                              "study/degenerate": statistics.fmean(r["degenerate"] for r in rows)}, step)
            return metrics

    folder = run_dir(out, arm, seed)
    overrides = {**BASE, **ARMS.get(arm, STARTS.get(arm, {})), "seed": seed, "output_dir": str(folder),
                 "max_steps": max(1, math.ceil(images / 16)) * 4, "resume_from_checkpoint": "latest"}
    config = load_config(GRPOConfig, ROOT / CONFIG, overrides, check_inputs=True)
    trainer = StudyTrainer(config)
    if arm in STARTS:
        trainer.evaluate(0)
        trainer.runtime.close()
    else:
        checkpoint = trainer.runtime.resolve_checkpoint("latest")
        if checkpoint is not None:  # the images spent before it, and the evaluation marks passed
            done = int(checkpoint.name.rsplit("-", 1)[1])
            trainer.images = sum(r.get("train/images", 0.0) for r in read_metrics(folder) if r["step"] <= done)
            while trainer.next_eval <= trainer.images:
                trainer.next_eval += eval_every
        trainer.train()
    (folder / "done.json").write_text(json.dumps({"arm": arm, "seed": seed, "images": trainer.images,
                                                  "steps": trainer.step}) + "\n")


def run_all(out: Path, arms: list[str], seeds: list[int], images: int, eval_every: int) -> None:
    """Every seed's start evaluation and arms, seed by seed, each in a fresh 1-thread process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for seed in seeds:
        for arm in [*dict.fromkeys([START, *map(start_of, arms)]), *arms]:
            folder = run_dir(out, arm, seed)
            if (folder / "done.json").exists():
                continue
            if folder.exists() and not any(folder.glob("checkpoint-*")):
                (folder / "metrics.jsonl").unlink(missing_ok=True)  # killed before its first checkpoint: restart clean
            folder.mkdir(parents=True, exist_ok=True)
            start = time.time()
            cmd = [sys.executable, __file__, "--out", str(out), "--run", arm, str(seed),
                   "--images", str(images), "--eval-every", str(eval_every)]
            with (folder / "log.txt").open("a") as log:
                rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"{arm} seed {seed}: rc={rc} wall {time.time() - start:.0f} s", flush=True)


# -- summary -------------------------------------------------------------------------------------
def read_metrics(folder: Path) -> list[dict[str, float]]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def dedupe(rows: list[dict[str, float]], key: str) -> list[dict[str, float]]:
    """The rows holding ``key``, the last one per step (a resumed run logs its redone steps again)."""
    by_step = {int(r["step"]): r for r in rows if key in r}
    return [by_step[s] for s in sorted(by_step)]


def load_run(folder: Path) -> dict[str, Any] | None:
    """Curves and totals of one finished run (None when it has not finished)."""
    if not (folder / "done.json").exists():
        return None
    rows = read_metrics(folder)
    train = dedupe(rows, "train/images")
    images = 0.0
    curve = []
    for r in train:
        images += r["train/images"]
        curve.append((images, r["reward/mean"]))
    evals = {int(r["step"]): r for r in dedupe(rows, "eval/reward")}
    marks = {int(r["step"]): r for r in dedupe(rows, "study/images")}
    heldout = [(marks[s]["study/images"], evals[s]["eval/shapes"], evals[s]["eval/metric/shapes_fidelity"])
               for s in sorted(evals)]
    screening = dedupe(rows, "screen/images")  # one row, at step 0, when the run screened its prompts
    final_step = max(evals)
    prompts = [json.loads(line) for line in (folder / "eval" / f"step-{final_step}.jsonl").read_text().splitlines()]
    return {
        "steps": len(train), "images": images, "train_curve": curve, "heldout": heldout,
        "screen_images": sum(r["screen/images"] for r in screening),
        "train_cpu_s": sum(r.get("study/cpu_s", 0.0) for r in train) + sum(r["screen/cpu_s"] for r in screening),
        "eval_cpu_s": sum(marks[s].get("study/cpu_s", 0.0) for s in marks),
        "exact": heldout[-1][1], "fidelity": heldout[-1][2],
        "degenerate": statistics.fmean(p["degenerate"] for p in prompts), "num_prompts": len(prompts),
    }


def paired(trained: dict[int, float], start: dict[int, float]) -> tuple[dict[int, float], Interval]:
    """Per-seed differences ``trained - start`` over the seeds both have, and their t-interval."""
    diffs = {s: trained[s] - start[s] for s in sorted(trained) if s in start}
    return diffs, t_interval(list(diffs.values()))


def fmt(iv: Interval, digits: int = 3) -> str:
    if math.isnan(iv.low):
        return f"{iv.mean:+.{digits}f} (n={iv.n})"
    return f"{iv.mean:.{digits}f} ± {iv.half_width:.{digits}f}"


def fmt_diff(iv: Interval) -> str:
    if math.isnan(iv.low):
        return f"{iv.mean:+.3f} (n={iv.n})"
    return f"{iv.mean:+.3f} ± {iv.half_width:.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def summarize(out: Path, arms: list[str], seeds: list[int]) -> tuple[str, dict[str, dict[int, dict]]]:
    """The markdown table and the loaded runs ``{arm: {seed: run}}`` (``start`` included)."""
    runs: dict[str, dict[int, dict]] = {}
    starts = list(dict.fromkeys([START, *map(start_of, arms)]))
    for arm in [*starts, *arms]:
        runs[arm] = {s: r for s in seeds if (r := load_run(run_dir(out, arm, s))) is not None}
    lines = [
        "| arm | seeds | steps | images | CPU s (train + eval) | held-out exact | Δ vs SFT start, per seed | Δ mean ± 95 % [interval] | fidelity (Δ) | degenerate final prompts |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for name in starts:
        start = runs[name]
        if not start:
            continue
        exact = t_interval([r["exact"] for r in start.values()])
        fid = statistics.fmean(r["fidelity"] for r in start.values())
        deg = statistics.fmean(r["degenerate"] for r in start.values())
        label = "SFT start" + (" (one-shot)" if name != START else "")
        lines.append(f"| {label} | {len(start)} | 0 | 0 | {statistics.fmean(r['eval_cpu_s'] for r in start.values()):.0f} "
                     f"(eval) | {fmt(exact)} | | | {fid:.3f} | {deg:.1%} |")
    for arm in arms:
        done, start = runs[arm], runs[start_of(arm)]
        if not done:
            lines.append(f"| {arm} | 0 | | | | (not run) | | | | |")
            continue
        exact = t_interval([r["exact"] for r in done.values()])
        diffs, diff = paired({s: r["exact"] for s, r in done.items()}, {s: r["exact"] for s, r in start.items()})
        _, fdiff = paired({s: r["fidelity"] for s, r in done.items()}, {s: r["fidelity"] for s, r in start.items()})
        per_seed = ", ".join(f"{d:+.3f}" for d in diffs.values())
        fid = statistics.fmean(r["fidelity"] for r in done.values())
        screen = statistics.fmean(r.get("screen_images", 0.0) for r in done.values())
        screened = f" + {screen:.0f} screened" if screen else ""
        lines.append(
            f"| {arm} | {len(done)} | {statistics.fmean(r['steps'] for r in done.values()):.0f} "
            f"| {statistics.fmean(r['images'] for r in done.values()):.0f}{screened} "
            f"| {statistics.fmean(r['train_cpu_s'] for r in done.values()):.0f} + "
            f"{statistics.fmean(r['eval_cpu_s'] for r in done.values()):.0f} "
            f"| {fmt(exact)} | {per_seed} | {fmt_diff(diff) if diffs else ''} "
            f"| {fid:.3f} ({fdiff.mean:+.3f}) | {statistics.fmean(r['degenerate'] for r in done.values()):.1%} |")
    notes = ("\nMeans over seeds (per-run steps, images, CPU seconds); held-out exact reward of the final "
             "adapter with its 95 % t-interval over seeds; Δ: paired per seed against the SFT start's "
             "held-out score at the same seed (same latents), then mean ± 95 % t-half-width [interval]; "
             "fidelity: `shapes_fidelity` (Δ paired mean); degenerate: share of final held-out prompts that "
             "drop or change a stated shape, colour, position or relation (or leave the grammar).\n")
    cpu = sum(r["train_cpu_s"] + r["eval_cpu_s"] for arm_runs in runs.values() for r in arm_runs.values())
    notes += f"\nAll {sum(map(len, runs.values()))} finished runs: {cpu / 60:.0f} CPU minutes (steps and evaluations, model loading not counted).\n"
    return "\n".join(lines) + "\n" + notes, runs


def _mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Point-wise mean of curves (x and y) over their common length."""
    n = min(len(c) for c in curves)
    return [(statistics.fmean(c[k][0] for c in curves), statistics.fmean(c[k][1] for c in curves)) for k in range(n)]


def plot(runs: dict[str, dict[int, dict]], arms: list[str], path: Path) -> None:
    """Per arm against the images spent: training reward (5-step running mean) and held-out exact
    reward (from the SFT start's), each seed thin and the mean over seeds thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    colors = dict(zip(arms, ("black", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown")))
    for arm in arms:
        if not runs[arm]:
            continue
        train, held = [], []
        for seed, run in sorted(runs[arm].items()):
            ys = [y for _, y in run["train_curve"]]
            train.append([(x, statistics.fmean(ys[max(0, k - 4):k + 1])) for k, (x, _) in enumerate(run["train_curve"])])
            start = runs[start_of(arm)].get(seed)
            held.append(([(0.0, start["exact"])] if start else []) + [(x, e) for x, e, _ in run["heldout"]])
        for ax, curves in ((ax1, train), (ax2, held)):
            for c in curves:
                ax.plot([p[0] for p in c], [p[1] for p in c], color=colors[arm], lw=0.7, alpha=0.3)
            mean = _mean_curve(curves)
            ax.plot([p[0] for p in mean], [p[1] for p in mean], color=colors[arm], lw=2,
                    marker="." if ax is ax2 else None, label=f"{arm} ({len(curves)} seeds)")
    ax1.set(title="training reward (5-step running mean)", xlabel="images", ylabel="reward")
    ax2.set(title="held-out exact reward (32 prompts, greedy)", xlabel="images")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "grpo-levers")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=800, help="image budget per run (summed train/images)")
    parser.add_argument("--eval-every", type=int, default=160, help="held-out evaluation every this many images")
    parser.add_argument("--figure", type=Path, default=None, help="write the curves here (PNG)")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--run", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(args.out, args.run[0], int(args.run[1]), args.images, args.eval_every)
        return
    if not args.summarize_only:
        run_all(args.out, args.arms, args.seeds, args.images, args.eval_every)
    table, runs = summarize(args.out, args.arms, args.seeds)
    (args.out / "summary.md").write_text(table)
    print(table)
    if args.figure:
        plot(runs, args.arms, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
