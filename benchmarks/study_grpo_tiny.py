"""Does GRPO raise the held-out reward? Train from the same start with several seeds and compare
the held-out figures of the trained adapter with the untrained policy's.

    .venv/bin/python benchmarks/study_grpo_tiny.py --seeds 0 1 2 --set max_steps=30   # grpo_tiny.yaml
    .venv/bin/python benchmarks/study_grpo_tiny.py --preset shapes-jpeg --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/study_grpo_tiny.py --preset shapes-large --seeds 0 1 2 3 4

Presets: ``tiny`` (``grpo_tiny.yaml``: random tiny models, JPEG compressibility); ``shapes-jpeg``
(the shipped ShapesWorld SFT policy on backbone A, 15 steps of JPEG compressibility: a reward that
the policy can raise by drawing less, i.e. by dropping the user's content); ``shapes-large`` (the
same start, 12 steps of the sanity reward "the final prompt says large": the end-to-end test's
settings). Prints, per seed, the untrained and trained held-out reward (greedy policy, fixed
latents, the eval schedule) and, on ShapesWorld prompts, beside it: the exact ShapesWorld reward
of the images against the user's prompts, the held-out fidelity metric and the share of
*degenerate* final prompts (outside the grammar, or naming other shapes/colours than the user's,
or placing them where the user's prompt says they are not). Then, per figure, the mean change
with its 95% t-interval over seeds (Student's t, n - 1 degrees of freedom) and Cohen's d_z. The
CPU kernel set (``ATEN_CPU_CAPABILITY``) is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

import promptloop.testing.rewards  # noqa: F401  (registers final_prompt_says)
from promptloop.rewards import get_reward
from promptloop.training.config import GRPOConfig, load_config
from promptloop.training.grpo.trainer import GRPOTrainer
from promptloop.worlds.shapes.grammar import ParseError, parse_prompt
from promptloop.worlds.shapes.tasks import satisfies, scene_of

ROOT = Path(__file__).resolve().parents[1]
SHAPES = "training/configs/grpo_shapes.yaml"
PRESETS: dict[str, tuple[str, list[str]]] = {
    "tiny": ("training/configs/grpo_tiny.yaml", []),
    "shapes-jpeg": (SHAPES, ["reward=jpeg_compressibility", "eval_metrics=[]", "max_steps=15",
                             "learning_rate=2e-3", "num_inference_steps=10", "eval_num_prompts=16"]),
    "shapes-large": (SHAPES, ["reward=final_prompt_says", "eval_metrics=[]", "beta=0", "max_steps=12",
                              "learning_rate=3e-3", "num_inference_steps=4", "schedule=random:1",
                              "eval_schedule=evenly:1", "eval_num_prompts=32"]),
}


def degenerate(final: str, user: str) -> bool:
    """Whether a final prompt drops or changes what the user stated: outside the grammar, other
    shapes/colours (or counts of them) than the user's, or an explicit scene that contradicts the
    user's positions and relations."""
    try:
        spec, wanted = parse_prompt(final), parse_prompt(user)
    except ParseError:
        return True
    if spec.color_kinds() != wanted.color_kinds():
        return True
    scene = scene_of(spec)
    return scene is not None and not satisfies(scene, wanted)


def heldout(trainer: GRPOTrainer, shapes: bool) -> dict[str, float]:
    """Held-out figures of the trainer's current policy (see the module docstring)."""
    batch = trainer.heldout_rollout()
    out = {"reward": statistics.fmean(batch.rewards)}
    if shapes:
        out["exact"] = statistics.fmean(get_reward("shapes")(batch.images, batch.prompts, None))
        out["fidelity"] = statistics.fmean(get_reward("shapes_fidelity")(batch.images, batch.prompts, None))
        finals = batch.trace.final_prompts()
        out["degenerate"] = statistics.fmean(degenerate(f, p) for f, p in zip(finals, batch.prompts))
        out["example"] = finals[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--config", default=None, help="a config instead of the preset's (no overrides)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override key=value")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    path, preset = PRESETS[args.preset]
    if args.config:
        path, preset = args.config, []
    out = Path(args.out or tempfile.mkdtemp(prefix="grpo-study-"))
    kernels = f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')} " \
              f"({torch.backends.cpu.get_cpu_capability()})"
    rows = []
    for seed in args.seeds:
        config = load_config(GRPOConfig, ROOT / path if not Path(path).is_absolute() else path, [
            *preset, *args.overrides, f"seed={seed}", f"output_dir={out / f'seed{seed}'}", "eval_on_start=false",
            "eval_steps=0", "save_steps=0", "progress=false", "report_to=none"])
        trainer = GRPOTrainer(config)
        shapes = str(config.eval_prompts).startswith("shapes")
        before = heldout(trainer, shapes)
        trainer.train()
        after = heldout(trainer, shapes)
        rows.append({"seed": seed, "kernels": kernels, "untrained": before, "trained": after})
        print(json.dumps(rows[-1]), flush=True)
    print(f"{args.preset} preset, {len(rows)} seeds, {kernels}")
    for key in (k for k in rows[0]["untrained"] if k != "example"):
        print(summarise([r["trained"][key] - r["untrained"][key] for r in rows], key,
                        [r["trained"][key] for r in rows]))


def summarise(gains: Sequence[float], name: str = "reward", trained: Sequence[float] | None = None,
              confidence: float = 0.95) -> str:
    """Mean change ± half-width of its ``confidence`` t-interval, sd, Cohen's d_z, seeds improved."""
    from scipy import stats

    n, mean = len(gains), statistics.fmean(gains)
    level = f" (trained: mean {statistics.fmean(trained):.4f})" if trained else ""
    if n < 2:
        return f"held-out {name} change over 1 seed: {mean:+.4f}{level} (no interval from one seed)"
    sd = statistics.stdev(gains)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    d_z = mean / sd if sd else float("inf")
    return (f"held-out {name} change over {n} seeds: mean {mean:+.4f} ± {half:.4f} "
            f"({confidence:.0%} t-interval [{mean - half:+.4f}, {mean + half:+.4f}]), sd {sd:.4f}, "
            f"d_z {d_z:.2f}, up in {sum(g > 0 for g in gains)}/{n}, worst {min(gains):+.4f}{level}")


if __name__ == "__main__":
    main()
