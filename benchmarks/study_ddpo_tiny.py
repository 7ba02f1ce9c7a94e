"""Does a short CPU run of DDPO / B²-DiffuRL raise JPEG compressibility on the tiny SD pipeline?

For each trainer and seed: the mean reward of the untuned backbone and of the tuned one on the
held-out prompts x fixed sampling seeds (same DDIM eta-1 sampler, same noise), their difference,
and the effect size over seeds (mean difference / its standard deviation). Also samples per
second and seconds per training epoch/stage.

    python benchmarks/study_ddpo_tiny.py --seeds 0 1 2 3 4 --trainers ddpo b2
    # on the trained ShapesWorld backbone (a tiny model whose images depend on the prompt):
    python benchmarks/study_ddpo_tiny.py --seeds 0 1 2 3 4 --trainers b2 --heldout shapes-heldout:5 \
        --set backbone=promptloop/assets/shapesworld/backbone-a --set prompts=shapes:16 --set learning_rate=3e-3

The figures depend on the CPU's float kernels: repeat under ``ATEN_CPU_CAPABILITY=default`` and
``=avx2`` (the kernel set in use is printed first); an effect that appears under one and not the
other is noise.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from promptloop.evaluation.intervals import t_interval
from promptloop.prompts import load_prompts
from promptloop.training.config import load_config
from promptloop.training.diffusion.b2 import B2Trainer
from promptloop.training.diffusion.config import B2Config, DDPOConfig
from promptloop.training.diffusion.ddpo import DDPOTrainer

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"ddpo": (DDPOConfig, DDPOTrainer, "ddpo_tiny.yaml"), "b2": (B2Config, B2Trainer, "b2_tiny.yaml")}


#: The tiny random pipeline's held-out prompts (none of them in its training set ``tiny``).
DEFAULT_HELDOUT = ["a tiny house on a hill", "a yellow boat on a lake", "an owl in the moonlight",
                   "a bowl of ramen", "a snowy mountain village"]


def run(kind: str, seed: int, extra: list[str], eval_seeds: int, heldout_spec: str | None = None) -> dict[str, float]:
    cls, trainer_cls, preset = PRESETS[kind]
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(cls, ROOT / "training" / "configs" / preset,
                          [f"output_dir={out}", f"seed={seed}", "progress=false", "report_to=none", "save_steps=0",
                           *extra])
        trainer = trainer_cls(cfg)
        heldout = load_prompts(heldout_spec) if heldout_spec else DEFAULT_HELDOUT
        base = trainer.evaluate(heldout, num_seeds=eval_seeds) if eval_seeds else float("nan")
        times, rates, train_rewards = [], [], []
        for step in range(cfg.max_steps):
            t0 = time.perf_counter()
            metrics = trainer.epoch(step)
            times.append(time.perf_counter() - t0)
            rates.append(metrics["train/samples_per_second"])
            train_rewards.append(metrics["train/reward_mean"])
            trainer.step = step + 1
        tuned = trainer.evaluate(heldout, num_seeds=eval_seeds) if eval_seeds else float("nan")
    third = max(1, len(train_rewards) // 3)
    return {"base": base, "tuned": tuned, "diff": tuned - base, "sec_per_epoch": statistics.mean(times),
            "samples_per_s": statistics.mean(rates),
            # the training reward's rise (last third minus first third of epochs): what a setting is chosen by
            "train_rise": statistics.mean(train_rewards[-third:]) - statistics.mean(train_rewards[:third])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trainers", nargs="+", default=["ddpo", "b2"], choices=sorted(PRESETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-seeds", type=int, default=8, help="sampling seeds per held-out prompt")
    parser.add_argument("--heldout", default=None,
                        help="held-out prompt set (promptloop.prompts spec, e.g. shapes-heldout:5); default: 5 "
                             "prompts outside the tiny training set")
    parser.add_argument("--no-eval", action="store_true",
                        help="only train and print the training reward's rise (to choose settings without "
                             "looking at the held-out prompts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}; overrides: {args.overrides}", flush=True)
    for kind in args.trainers:
        rows = []
        for seed in args.seeds:
            r = run(kind, seed, args.overrides, 0 if args.no_eval else args.eval_seeds, args.heldout)
            rows.append(r)
            print(f"{kind} seed {seed}: base {r['base']:.4f}  tuned {r['tuned']:.4f}  diff {r['diff']:+.4f}  "
                  f"train rise {r['train_rise']:+.4f}  {r['sec_per_epoch']:.1f} s/epoch  "
                  f"{r['samples_per_s']:.2f} samples/s", flush=True)
        rises = [r["train_rise"] for r in rows]
        print(f"{kind}: training reward rise {statistics.mean(rises):+.4f} (mean over {len(rises)} seeds)", flush=True)
        if args.no_eval:
            continue
        diffs = [r["diff"] for r in rows]
        interval = t_interval(diffs)
        sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        print(f"{kind}: mean diff {interval.mean:+.4f} ± {interval.half_width:.4f} (95% t-interval) kB-score over "
              f"{len(diffs)} seeds, effect size (mean/sd) {interval.mean / sd if sd > 0 else float('nan'):.2f}, "
              f"improved in {sum(d > 0 for d in diffs)}/{len(diffs)}", flush=True)


if __name__ == "__main__":
    main()
