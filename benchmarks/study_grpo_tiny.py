"""Does GRPO raise the held-out reward on tiny models? Train from the same warm policy with
several seeds and compare the held-out reward of the trained adapter with the untrained policy's.

    .venv/bin/python benchmarks/study_grpo_tiny.py --seeds 0 1 2 --set max_steps=30

Prints, per seed, the untrained and trained held-out reward (greedy policy, fixed latents, the
eval schedule), then the mean gain with its 95% t-interval over seeds (Student's t, n - 1
degrees of freedom), the standard deviation of the gains and the paired effect size (mean gain /
std of gains; Cohen's d_z).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

from promptloop.training.config import GRPOConfig, load_config
from promptloop.training.grpo.trainer import GRPOTrainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "training/configs/grpo_tiny.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="grpo-study-"))
    rows = []
    for seed in args.seeds:
        config = load_config(GRPOConfig, args.config, [*args.overrides, f"seed={seed}",
                                                       f"output_dir={out / f'seed{seed}'}", "eval_on_start=true",
                                                       "eval_steps=0", "progress=false"])
        trainer = GRPOTrainer(config)
        before = trainer.evaluate(0)["eval/reward"]
        trainer.config.eval_on_start = False
        trainer.train()
        after = trainer.evaluate(config.max_steps)["eval/reward"]
        rows.append({"seed": seed, "untrained": before, "trained": after, "gain": after - before})
        print(json.dumps(rows[-1]), flush=True)
    print(summarise([r["gain"] for r in rows]))


def summarise(gains: list[float], confidence: float = 0.95) -> str:
    """Mean gain ± half-width of its ``confidence`` t-interval, sd, Cohen's d_z, seeds improved."""
    from scipy import stats

    n, mean = len(gains), statistics.fmean(gains)
    if n < 2:
        return f"held-out reward gain over 1 seed: {mean:+.4f} (no interval from one seed)"
    sd = statistics.stdev(gains)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    d_z = mean / sd if sd else float("inf")
    return (f"held-out reward gain over {n} seeds: mean {mean:+.4f} ± {half:.4f} "
            f"({confidence:.0%} t-interval [{mean - half:+.4f}, {mean + half:+.4f}]), sd {sd:.4f}, "
            f"Cohen's d_z {d_z:.2f}, improved in {sum(g > 0 for g in gains)}/{n}")

if __name__ == "__main__":
    main()
