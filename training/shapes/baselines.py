"""Reference rows for the ShapesWorld experiment that need no training: how far a hand-written
one-shot rewrite gets, and the ceiling of rewriting.

    python -m promptloop.training.shapes.baselines --backbone backbone-c --n 128 --seeds 0 1000

Rows, on the same held-out prompts and noise (image i of sampling seed s uses noise seed
``image_seed(s, i) = s * 100003 + i``, the convention of :mod:`promptloop.rollout`):

* ``alone``: the backbone given the user's prompt;
* ``scripted one-shot``: :func:`~promptloop.worlds.shapes.rewrite.explicit_rewrite` before sampling
  (no model, no preview: stated attributes kept, open sizes ``large``, open cells spread out);
* ``oracle``: the ``full`` caption of the held-out scene itself (what a rewrite can at best say;
  it knows sizes and cells the user never stated, so it is a ceiling, not a baseline);
* ``SFT step-wise`` and, with ``--adapter``, the trained policy step-wise (``evenly:2``, sync).

Prints a markdown table: mean exact reward with its 95 % interval over images, per attribute, and
the paired difference with ``alone``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from promptloop.worlds.shapes.reward import score_image


def _scores(images, prompts) -> list[dict]:
    return [score_image(im, p) for im, p in zip(images, prompts, strict=True)]


def run(backbone: str, n: int, seeds: list[int], adapter: str | Path | None, echo=print) -> dict[str, list[dict]]:
    import torch

    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.worlds.shapes.backbone import load_backbone
    from promptloop.worlds.shapes.demo import policy_path
    from promptloop.worlds.shapes.evaluation import generate, heldout_prompts
    from promptloop.worlds.shapes.grammar import caption
    from promptloop.worlds.shapes.rewrite import explicit_rewrite

    torch.manual_seed(0)
    pipe = load_backbone(backbone)
    pairs = heldout_prompts(n)
    users = [p for _, p in pairs]
    inputs = {"alone": users, "scripted one-shot": [explicit_rewrite(p) for p in users],
              "oracle (true scene, full caption)": [caption(s, "full") for s, _ in pairs]}
    loras = {"SFT step-wise": None} | ({"trained step-wise": adapter} if adapter else {})
    policies = {name: TransformersPolicy.from_pretrained(policy_path(), adapter=lora, device="cpu", dtype="float32",
                                                         sampling=SamplingConfig(max_new_tokens=64))
                for name, lora in loras.items()}
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, prompts in inputs.items():
            rows.setdefault(name, []).extend(_scores(generate(pipe, prompts, seed=seed), users))
        for name, policy in policies.items():
            images = generate(pipe, users, seed=seed, policy=policy)
            rows.setdefault(name, []).extend(_scores(images, users))
        echo(f"  sampling seed {seed}: done")
    return rows


def table(rows: dict[str, list[dict]]) -> str:
    from promptloop.evaluation import t_interval

    attrs = ("color", "shape", "count", "position")
    base = [s["mean"] for s in rows["alone"]]
    lines = ["| row | reward | Δ vs alone (paired) | " + " | ".join(attrs) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in attrs) + " |"]
    for name, scores in rows.items():
        mean = t_interval([s["mean"] for s in scores])
        diff = t_interval([s["mean"] - b for s, b in zip(scores, base)])
        cells = []
        for a in attrs:
            vals = [s[a] for s in scores if s[a] is not None]
            cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "–")
        delta = "–" if name == "alone" else f"{diff.mean:+.3f} ± {(diff.high - diff.low) / 2:.3f}"
        lines.append(f"| {name} | {mean.mean:.3f} ± {(mean.high - mean.low) / 2:.3f} | {delta} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="backbone-c")
    p.add_argument("--n", type=int, default=128, help="held-out prompts")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1000], help="sampling seeds")
    p.add_argument("--adapter", default=None, help="a trained policy LoRA to add as a row (e.g. policy-grpo)")
    p.add_argument("--out", type=Path, default=None, help="also write the per-image scores here (JSON)")
    args = p.parse_args(argv)
    from promptloop.worlds.shapes.demo import adapter_path

    rows = run(args.backbone, args.n, args.seeds, adapter_path(args.adapter) if args.adapter else None)
    if args.out:
        args.out.write_text(json.dumps(rows))
    print(f"\nbackbone {args.backbone}, {args.n} held-out prompts x sampling seeds {args.seeds}:\n")
    print(table(rows))


if __name__ == "__main__":
    main()
