"""Overhead of the hook: wall time hooked / plain on tiny models, K = 0 and K = 3 refinements.

    python benchmarks/bench_hook.py [--device cuda] [--steps 20] [--repeats 5]

The policy is the real tiny Qwen2-VL, taught to append a style phrase (promptloop.testing.warmup) (transformers backend, greedy, 16 new tokens) looking at
VAE previews. Ratios are against plain sampling measured in the same run (interleaved).
"""

from __future__ import annotations

from common import base_parser, report, time_interleaved, tiny_runner

from promptloop import PromptLoopHook
from promptloop.policies import SamplingConfig, TransformersPolicy
from promptloop.testing.warmup import cached_warm_tiny_qwen2vl


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--preview", default="vae", choices=["vae", "linear"])
    args = parser.parse_args()
    run = tiny_runner(args)
    policy = TransformersPolicy.from_pretrained(cached_warm_tiny_qwen2vl(), device=args.device, dtype="float32",
                                                sampling=SamplingConfig(max_new_tokens=48))

    hooks = {k: PromptLoopHook(policy, schedule=f"evenly:{k}" if k else None, preview=args.preview,
                               preview_size=112) for k in (0, 3)}
    times = time_interleaved(
        {"plain": run, "hooked K=0": lambda: run(hooks[0]), "hooked K=3": lambda: run(hooks[3])},
        args.repeats, args.device,
    )
    report(times, "plain", f"hook overhead: tiny {args.family}, {args.steps} steps, {args.size}px, batch "
                           f"{args.batch}, preview={args.preview}, device={args.device}")
    trace = hooks[3].trace
    print(f"K=3 trace: {len(trace.entries)} refinements, preview {trace.meta.get('preview_s')} s, "
          f"encode {trace.meta.get('encode_s')} s per call")


if __name__ == "__main__":
    main()
