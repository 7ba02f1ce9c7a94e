"""sync / async / ahead over plain sampling, K = 5 refinements, with a policy of set latency.

    python benchmarks/bench_modes.py [--device cuda] [--steps 50] [--delay-steps 3]

The policy is the real tiny Qwen2-VL, taught to append a style phrase (promptloop.testing.warmup) plus an injected delay equal to ``--delay-steps`` plain
denoising steps (measured in this run), standing in for a large policy's latency. The goals
(issue 5): sync <= 1.2x, async <= 1.05x, ahead <= 1.02x plain.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

from common import base_parser, report, time_interleaved, tiny_runner

from promptloop import PromptLoopHook
from promptloop.policies import SamplingConfig, TransformersPolicy
from promptloop.policies.process import ProcessPolicy
from promptloop.testing.warmup import cached_warm_tiny_qwen2vl


class DelayedPolicy:
    """A real policy whose every call (refine or plan) takes at least ``delay_s``."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def _wait(self, start: float) -> None:
        left = self.delay_s - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)

    def refine(self, observations):
        start = time.perf_counter()
        out = self.inner.refine(observations)
        self._wait(start)
        return out

    def plan(self, prompts, steps, num_steps):
        start = time.perf_counter()
        out = self.inner.plan(prompts, steps, num_steps)
        self._wait(start)
        return out


def delayed_tiny_policy(path: str, device: str, delay_s: float) -> DelayedPolicy:
    """Factory for the child process of ``ProcessPolicy`` (module level, so it pickles)."""
    inner = TransformersPolicy.from_pretrained(path, device=device, dtype="float32",
                                               sampling=SamplingConfig(max_new_tokens=48))
    return DelayedPolicy(inner, delay_s)


def main() -> None:
    parser = base_parser(__doc__)
    parser.set_defaults(steps=50, repeats=3)
    parser.add_argument("--refinements", type=int, default=5)
    parser.add_argument("--delay-steps", type=float, default=3.0)
    parser.add_argument("--preview", default="linear", choices=["vae", "linear"])
    args = parser.parse_args()
    run = tiny_runner(args)
    policy_dir = str(cached_warm_tiny_qwen2vl())
    inner = TransformersPolicy.from_pretrained(policy_dir, device=args.device, dtype="float32",
                                               sampling=SamplingConfig(max_new_tokens=48))

    run()
    plain = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        plain.append(time.perf_counter() - start)
    step_s = statistics.median(plain) / args.steps
    policy = DelayedPolicy(inner, args.delay_steps * step_s)
    schedule = f"evenly:{args.refinements}"
    hooks = {mode: PromptLoopHook(policy, schedule=schedule, mode=mode, preview=args.preview, preview_size=112)
             for mode in ("sync", "async", "ahead")}
    # The same policy in a child process: no GIL contention with the sampling thread.
    remote = ProcessPolicy(partial(delayed_tiny_policy, policy_dir, args.device, policy.delay_s))
    hooks["async-process"] = PromptLoopHook(remote, schedule=schedule, mode="async", preview=args.preview,
                                            preview_size=112)
    configs = {"plain": run}
    configs.update({f"{mode} K={args.refinements}": (lambda h=h: run(h)) for mode, h in hooks.items()})
    times = time_interleaved(configs, args.repeats, args.device)
    print(f"plain step {step_s * 1000:.1f} ms; policy latency set to {policy.delay_s * 1000:.1f} ms "
          f"({args.delay_steps:g} steps)")
    ratios = report(times, "plain", f"modes: tiny {args.family}, {args.steps} steps, {args.size}px, batch {args.batch}, "
                                    f"preview={args.preview}, device={args.device}")
    goals = {"sync": 1.2, "async": 1.05, "async-process": 1.05, "ahead": 1.02}
    for mode, goal in goals.items():
        ratio = ratios[f"{mode} K={args.refinements}"]
        print(f"  {mode:<6} {ratio:.3f}x  (goal <= {goal}x: {'met' if ratio <= goal else 'NOT met'})")
    for mode in ("sync", "async", "async-process", "ahead"):
        trace = hooks[mode].trace
        lags = [e.applied_step - e.step for e in trace.entries if e.applied_step is not None]
        kinds = sorted({e.fallback or "applied" for e in trace.entries})
        print(f"{mode}: {len(lags)}/{len(trace.entries)} refinements took effect (outcomes: {', '.join(kinds)}); "
              f"lag in steps {sorted(set(lags))}")
    remote.close()


if __name__ == "__main__":
    main()
