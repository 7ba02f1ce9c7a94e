"""Confirm a GRPO recipe on prompts nobody looked at: trained policy adapters against their SFT start.

    python benchmarks/confirm_policy_adapters.py --runs RUN_SEED0 RUN_SEED1 RUN_SEED2 --n 128 --seeds 0 1000

Each ``RUN`` is a GRPO output folder (its ``adapter/``) or an adapter folder; one per training seed.
The held-out set is :func:`~promptloop.worlds.shapes.evaluation.heldout_prompts` at ``--offset``
(default 1000: scenes disjoint from the first held-out prompts, which training-time evaluations and
lever studies watch, so the recipe was not chosen on these), at ``--schedule`` (default ``evenly:2``;
``oneshot`` for a one-shot recipe) in sync mode with 112 px VAE previews on ``--backbone`` (the
experiment's loop), greedy decoding, image i of sampling seed s from ``image_seed(s, i)``. Every image is scored against the user's prompt.

Prints, for the SFT start and each run: exact reward (± 95 % t-interval over images), held-out
fidelity, the share of *degenerate* final prompts (drop or change a stated shape, colour, position
or relation; ``study_grpo_tiny.degenerate``), the paired difference with the SFT start on the same
images, and at the end the mean of the per-run differences with its 95 % t-interval **over training
seeds** (the issue's criterion). ``--json`` writes every per-image figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _adapter(path: Path) -> Path:
    return path / "adapter" if (path / "adapter").is_dir() else path


def evaluate(pipe, sft: Path, adapter: Path | None, users: list[str], seeds: list[int],
             schedule: str = "evenly:2") -> list[dict]:
    """Per-image exact reward, fidelity and degeneracy of the SFT start (+ ``adapter``) at ``schedule``."""
    from study_grpo_tiny import degenerate

    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.worlds.shapes.evaluation import generate_with_finals
    from promptloop.worlds.shapes.reward import fidelity, score_image

    policy = TransformersPolicy.from_pretrained(sft, adapter=adapter, device="cpu", dtype="float32",
                                                sampling=SamplingConfig(max_new_tokens=64))
    rows = []
    for seed in seeds:
        images, finals = generate_with_finals(pipe, users, seed=seed, policy=policy, schedule=schedule)
        for user, image, final in zip(users, images, finals, strict=True):
            rows.append({"prompt": user, "final": final, "reward": score_image(image, user)["mean"],
                         "fidelity": fidelity(image), "degenerate": degenerate(final, user)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="one GRPO run (or adapter) per training seed")
    p.add_argument("--backbone", default="backbone-c")
    p.add_argument("--sft", type=Path, default=None, help="the SFT start (default: the shipped policy-sft)")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--offset", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1000], help="sampling seeds")
    p.add_argument("--schedule", default="evenly:2", help="where the policy refines (oneshot: rewrites once, no preview)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    from promptloop.evaluation import t_interval
    from promptloop.worlds.shapes.backbone import load_backbone
    from promptloop.worlds.shapes.demo import policy_path
    from promptloop.worlds.shapes.evaluation import heldout_prompts

    torch.set_num_threads(args.threads)
    sft = args.sft or policy_path()
    users = [q for _, q in heldout_prompts(args.n, offset=args.offset)]
    t0 = time.perf_counter()
    pipe = load_backbone(args.backbone)  # once: every policy steers the same frozen backbone
    results = {"sft": evaluate(pipe, sft, None, users, args.seeds, args.schedule)}
    for run in args.runs:
        results[str(run)] = evaluate(pipe, sft, _adapter(run), users, args.seeds, args.schedule)
    base = [r["reward"] for r in results["sft"]]

    print(f"\n{args.backbone}, {args.n} held-out prompts (offset {args.offset}) x sampling seeds {args.seeds}, "
          f"{args.schedule}, greedy ({time.perf_counter() - t0:.0f} s):\n")
    print("| policy | exact reward | Δ vs SFT start (paired) | fidelity | degenerate final prompts |")
    print("| --- | ---: | ---: | ---: | ---: |")
    deltas = []
    for name, rows in results.items():
        rew = t_interval([r["reward"] for r in rows])
        fid = statistics.fmean(r["fidelity"] for r in rows)
        deg = statistics.fmean(r["degenerate"] for r in rows)
        if name == "sft":
            delta = "–"
        else:
            d = t_interval([r["reward"] - b for r, b in zip(rows, base, strict=True)])
            deltas.append(d.mean)
            delta = f"{d.mean:+.3f} ± {d.half_width:.3f}"
        print(f"| {name} | {rew.mean:.3f} ± {rew.half_width:.3f} | {delta} | {fid:.3f} | {deg:.1%} |")
    if len(deltas) > 1:
        over = t_interval(deltas)
        print(f"\nover {len(deltas)} training seeds: Δ {over.mean:+.3f}, 95 % interval [{over.low:+.3f}, {over.high:+.3f}]"
              f" (per seed: {', '.join(f'{d:+.3f}' for d in deltas)})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
