"""Shared timing helpers: interleaved repeats, medians, ratios to a same-run baseline."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (interleaved)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--batch", type=int, default=2, help="prompts per pipeline call")
    parser.add_argument("--family", default="sd", choices=["sd", "sdxl", "sd3", "flux"])
    return parser


def tiny_runner(args: argparse.Namespace) -> Callable[..., object]:
    """``run(hook=None)``: the tiny ``--family`` pipeline on ``--device`` sampling
    ``--batch`` prompts for ``--steps`` steps at ``--size`` px from a fixed seed."""
    from promptloop.testing import TINY_PROMPTS, tiny_pipeline

    torch.set_grad_enabled(False)
    pipe = tiny_pipeline(args.family).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    prompts = TINY_PROMPTS[: args.batch]

    def run(hook=None):
        kwargs = {"num_inference_steps": args.steps, "height": args.size, "width": args.size, "output_type": "latent",
                      "generator": torch.Generator().manual_seed(0)}
        if hook is not None:
            kwargs["callback_on_step_end"] = hook
        return pipe(prompts, **kwargs)

    return run


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(configs: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    """Run every configuration once as warm-up, then ``repeats`` rounds, one of each per round."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    for fn in configs.values():
        fn()
    for _ in range(repeats):
        for name, fn in configs.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], baseline: str, title: str) -> dict[str, float]:
    base = statistics.median(times[baseline])
    print(f"\n{title}")
    print(f"{'configuration':<34}{'median s':>10}{'min s':>10}{'ratio':>9}")
    ratios = {}
    for name, values in times.items():
        med = statistics.median(values)
        ratios[name] = med / base
        print(f"{name:<34}{med:>10.4f}{min(values):>10.4f}{ratios[name]:>8.3f}x")
    return ratios
