"""GRPO benchmarks on the tiny models: rollout throughput with vLLM vs transformers generation,
and the time split of one GRPO step.

    python benchmarks/bench_grpo.py                      # both parts (vLLM part skipped if not installed)
    python benchmarks/bench_grpo.py --skip-vllm --grpo-steps 3

Part 1 samples the same rollout batch (prompts x num_generations, the training schedule) through
the real hook with the policy generating on (a) transformers ``generate`` and (b) an in-process
vLLM engine serving the same weights with the LoRA adapter as a LoRARequest; it prints rollouts
per second for each and their ratio (interleaved repeats, medians). Part 2 runs a few GRPO steps
and prints the mean time of each phase: rollout (diffusion, preview, policy generation, prompt
encoding), reward, scoring (old/reference log-probs) and update.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from promptloop.policies.base import SamplingConfig
from promptloop.training.config import GRPOConfig, load_config
from promptloop.training.grpo.trainer import GRPOTrainer
from promptloop.training.rollouts import rollout
from promptloop.training.runtime import derived_seed

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("time/rollout_diffusion_s", "time/rollout_preview_s", "time/rollout_policy_s", "time/rollout_encode_s",
          "time/reward_s", "time/scoring_s", "time/update_s")


def timed_rollout(trainer: GRPOTrainer, policy, prompts, seed: int) -> float:
    """Rollouts per second of one batch through the hook with ``policy`` generating (the
    training sampling, passed per call)."""
    c = trainer.config
    sampling = SamplingConfig(max_new_tokens=c.max_completion_length, temperature=c.temperature, top_p=c.top_p,
                              return_logprobs=True, seed=seed % 2**31)
    start = time.perf_counter()
    batch = rollout(trainer.pipeline, policy, prompts, trainer.reward, num_generations=c.num_generations,
                    schedule=c.schedule, seed=seed, mode=c.mode, num_inference_steps=c.num_inference_steps,
                    guidance_scale=c.guidance_scale, height=c.height, width=c.width, preview=c.preview,
                    preview_size=c.preview_size, sampling=sampling)
    return batch.num_trajectories / (time.perf_counter() - start)


def compare_backends(trainer: GRPOTrainer, policies: dict, prompts, repeats: int) -> dict[str, list[float]]:
    """Rollouts per second per backend: one warm-up round, then ``repeats`` interleaved rounds
    (both backends sample the same seeds)."""
    rates: dict[str, list[float]] = {name: [] for name in policies}
    for r in range(repeats + 1):
        seed = derived_seed(trainer.config.seed, 777, r)
        for name, policy in policies.items():
            rate = timed_rollout(trainer, policy, prompts, seed)
            if r:
                rates[name].append(rate)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "training/configs/grpo_tiny.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="bench-grpo-")
    config = load_config(GRPOConfig, args.config, [*args.overrides, f"output_dir={out}", "eval_steps=0",
                                                   "save_steps=0", "progress=false", f"max_steps={args.grpo_steps}"])
    trainer = GRPOTrainer(config)
    prompts = trainer.prompts_for_step(0)
    print(f"batch: {len(prompts)} prompts x {config.num_generations} generations, {config.num_inference_steps} steps, "
          f"schedule {config.schedule}, max {config.max_completion_length} new tokens, torch threads "
          f"{torch.get_num_threads()}", flush=True)

    if not args.skip_vllm and importlib.util.find_spec("vllm") is not None:
        own = trainer.rollout_policy is trainer.policy  # else rollout_backend=vllm started one already
        vllm_policy = trainer._start_vllm() if own else trainer.rollout_policy
        try:
            rates = compare_backends(trainer, {"hf": trainer.policy, "vllm": vllm_policy}, prompts, args.repeats)
        finally:
            if own:
                vllm_policy.shutdown()
        hf, vl = statistics.median(rates["hf"]), statistics.median(rates["vllm"])
        print(f"\nrollouts/s (median of {args.repeats})  transformers generate {hf:.3f}   vLLM {vl:.3f}   "
              f"ratio vLLM/HF {vl / hf:.2f}x", flush=True)
    elif not args.skip_vllm:
        print("vLLM is not installed: rollout throughput comparison skipped")

    times = {k: [] for k in (*PHASES, "time/step_s")}
    for step in range(args.grpo_steps):
        metrics = trainer.train_step(step)
        for key, seen in times.items():
            seen.append(metrics.get(key, 0.0))
    total = statistics.fmean(times["time/step_s"])
    print(f"\nGRPO step time split (mean of {args.grpo_steps} steps, {total:.2f} s per step)")
    for key in PHASES:
        mean = statistics.fmean(times[key])
        print(f"{key.removeprefix('time/').removesuffix('_s'):<20}{mean:>9.3f} s {100 * mean / total:>6.1f} %")


if __name__ == "__main__":
    main()
