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

from promptloop.training.config import GRPOConfig, load_config
from promptloop.training.grpo.trainer import GRPOTrainer
from promptloop.training.runtime import derived_seed

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("time/rollout_diffusion_s", "time/rollout_preview_s", "time/rollout_policy_s", "time/rollout_encode_s",
          "time/reward_s", "time/scoring_s", "time/update_s")


def rollouts_per_second(trainer: GRPOTrainer, policy, prompts, repeats: int) -> list[float]:
    c = trainer.config
    rates = []
    for r in range(repeats + 1):  # the first round warms up
        seed = derived_seed(c.seed, 777, r)
        policy.sampling = trainer.sampling.__class__(max_new_tokens=c.max_completion_length,
                                                     temperature=c.temperature, return_logprobs=True,
                                                     seed=seed % 2**31)
        start = time.perf_counter()
        from promptloop.training.rollouts import rollout

        batch = rollout(trainer.pipeline, policy, prompts, trainer.reward, num_generations=c.num_generations,
                        schedule=c.schedule, seed=seed, mode=c.mode, num_inference_steps=c.num_inference_steps,
                        guidance_scale=c.guidance_scale, height=c.height, width=c.width, preview=c.preview,
                        preview_size=c.preview_size)
        if r:
            rates.append(batch.num_trajectories / (time.perf_counter() - start))
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
          f"{torch.get_num_threads()}")

    if not args.skip_vllm and importlib.util.find_spec("vllm") is not None:
        hf = rollouts_per_second(trainer, trainer.policy, prompts, args.repeats)
        trainer.rollout_policy = trainer._start_vllm()
        try:
            vl = rollouts_per_second(trainer, trainer.rollout_policy, prompts, args.repeats)
        finally:
            trainer.close()
            trainer.rollout_policy = trainer.policy
        print(f"\nrollouts/s  transformers generate {statistics.median(hf):.3f}   vLLM {statistics.median(vl):.3f}   "
              f"ratio vLLM/HF {statistics.median(vl) / statistics.median(hf):.2f}x")
    elif not args.skip_vllm:
        print("vLLM is not installed: rollout throughput comparison skipped")

    times = {k: [] for k in (*PHASES, "time/step_s")}
    for step in range(args.grpo_steps):
        metrics = trainer.train_step(step)
        for key in times:
            times[key].append(metrics.get(key, 0.0))
    total = statistics.fmean(times["time/step_s"])
    print(f"\nGRPO step time split (mean of {args.grpo_steps} steps, {total:.2f} s per step)")
    for key in PHASES:
        mean = statistics.fmean(times[key])
        print(f"{key.removeprefix('time/').removesuffix('_s'):<20}{mean:>9.3f} s {100 * mean / total:>6.1f} %")


if __name__ == "__main__":
    main()
