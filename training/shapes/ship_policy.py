"""Ship a GRPO-trained ShapesWorld policy adapter (``policy-grpo``).

    python -m promptloop.training.shapes.ship_policy --run runs/experiment-descriptive \\
        --seed 0 --backbone backbone-c --out promptloop/assets/shapesworld/policy-grpo
    python -m promptloop.training.shapes.ship_policy --job runs/grpo-levers/screened-seed0 \\
        --confirm confirm.json --command "..."

The source is the alignment experiment's step-wise (c) run of training seed ``--seed`` (seed 0 by
default: fixed before looking at the results, since shipping the seed that scored best on the
held-out prompts would report a selected figure), or any GRPO output folder given as ``--job``.
Copies its LoRA adapter, points the adapter's config at the shipped SFT start, writes a model card,
and records in ``training_info.json``: the training run (its settings and costs), the experiment's
figures for (a), (a') and (c) when its ``summary.json`` is there, the recipe's held-out
confirmations (``benchmarks/confirm_policy_adapters.py --json``, one per held-out set) when given, and the exact reward on the tests'
fixed held-out set (:data:`~promptloop.worlds.shapes.evaluation.POLICY_TEST_SET`) of the backbone
alone, the SFT start step-wise and the trained policy step-wise, which the tests re-measure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from promptloop.training.shapes.jobs import step_metrics
from promptloop.worlds.shapes.backbone import ASSETS, backbone_path
from promptloop.worlds.shapes.evaluation import STEPWISE_SCHEDULE

CARD = """---
library_name: peft
base_model: promptloop/assets/shapesworld/policy-sft
tags: [promptloop, shapesworld, grpo, lora]
---

# PromptLoop ShapesWorld policy, GRPO step-wise (LoRA)

A rank-{r} LoRA of the shipped ShapesWorld SFT policy start (`policy-sft`, a tiny Qwen2-VL),
trained with GRPO on the exact ShapesWorld reward while refining prompts of the frozen
`{backbone}` in the loop (training seed {seed}, {steps} steps, {images} sampled images). Figures,
command and run time: `training_info.json`, docs/training.md and docs/experiment.md.

```python
from promptloop.policies import TransformersPolicy
policy = TransformersPolicy.from_pretrained("promptloop/assets/shapesworld/policy-sft",
                                           adapter="promptloop/assets/shapesworld/policy-grpo")
```
"""


def measure(backbone: str, sft: Path, adapter: Path | None, settings: dict) -> dict[str, float]:
    """Exact reward of ``backbone`` alone (``adapter`` None and ``sft`` None), or steered by the SFT
    start (with ``adapter`` when given), on the held-out set ``settings``."""
    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.worlds.shapes.backbone import load_backbone
    from promptloop.worlds.shapes.evaluation import evaluate_backbone, evaluate_steered

    pipe = load_backbone(backbone)
    if sft is None:
        return evaluate_backbone(pipe, **settings)
    policy = TransformersPolicy.from_pretrained(sft, adapter=adapter, device="cpu", dtype="float32",
                                                sampling=SamplingConfig(max_new_tokens=64))
    return evaluate_steered(pipe, policy, **settings)


def test_set_figures(backbone: str, sft: Path, adapter: Path) -> dict:
    """The backbone alone, the SFT start and the adapter on :data:`POLICY_TEST_SET`, and the margins."""
    from promptloop.worlds.shapes.evaluation import POLICY_TEST_SET

    alone = measure(backbone, None, None, POLICY_TEST_SET)
    start = measure(backbone, sft, None, POLICY_TEST_SET)
    trained = measure(backbone, sft, adapter, POLICY_TEST_SET)
    return {"settings": dict(POLICY_TEST_SET, schedule=STEPWISE_SCHEDULE, mode="sync"), "backbone": alone, "sft": start,
            "grpo": trained, "margin_vs_backbone": round(trained["mean"] - alone["mean"], 4),
            "margin_vs_sft": round(trained["mean"] - start["mean"], 4)}


def _experiment_figures(run: Path) -> dict | None:
    path = run / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    rows = {k: summary["rows"][k]["shapes"] for k in ("a", "a-sft", "a-sft-oneshot", "b", "c-sync") if k in summary["rows"]}
    deltas = {k: summary["delta_vs_baseline"][k] for k in ("a-sft", "b", "c-sync") if k in summary["delta_vs_baseline"]}
    return {"rows": rows, "delta_vs_backbone": deltas,
            "comparisons": {k: v for k, v in summary["comparisons"].items() if k.startswith("c-sync")},
            "settings": {k: summary["settings"][k] for k in ("train_seeds", "grpo_steps", "eval_prompts", "eval_seeds")}}


def job_costs(job: Path) -> dict:
    """A GRPO run's costs: the experiment's ``costs.json``, else summed from its ``metrics.jsonl``
    (the last row per step, since a resumed run logs its redone steps again)."""
    if (job / "costs.json").exists():
        return json.loads((job / "costs.json").read_text())
    rows = step_metrics(job).values()
    return {"steps": sum("train/images" in r for r in rows),
            "images": int(sum(r.get("train/images", 0.0) for r in rows)),
            "screened_images": int(sum(r.get("screen/images", 0.0) for r in rows))}


def _confirmation(path: Path) -> dict:
    """The per-seed paired differences of ``confirm_policy_adapters.py --json`` against the SFT start."""
    from promptloop.evaluation import t_interval

    data = json.loads(path.read_text())
    base = data["results"].pop("sft")
    runs = {}
    for name, rows in data["results"].items():
        d = t_interval([r["reward"] - b["reward"] for r, b in zip(rows, base, strict=True)])
        runs[name] = {"delta": round(d.mean, 4), "half_width": round(d.half_width, 4),
                      "degenerate": round(sum(r["degenerate"] for r in rows) / len(rows), 4)}
    over = t_interval([r["delta"] for r in runs.values()])
    return {"settings": data["args"], "sft_degenerate": round(sum(b["degenerate"] for b in base) / len(base), 4),
            "runs": runs, "over_seeds": {"mean": round(over.mean, 4), "low": round(over.low, 4),
                                         "high": round(over.high, 4)}}


def ship(run: Path | None, seed: int, backbone: str, out: Path, sft: Path = ASSETS / "policy-sft", *,
         job: Path | None = None, confirm: Sequence[Path] = (), command: str | None = None) -> dict:
    """Copy the adapter of ``job`` (default: the experiment ``run``'s step-wise run of ``seed``) to
    ``out`` with its model card and ``training_info.json``; returns the info."""
    job = job or run / "train" / f"grpo-stepwise-seed{seed}"
    adapter = job / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"no trained adapter at {adapter}; train it first (`promptloop experiment shapes` "
                                "or `promptloop train grpo`)")
    training_config = yaml.safe_load((job / "config.yaml").read_text())
    seed = training_config.get("seed", seed)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(adapter / "adapter_model.safetensors", out / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "promptloop/assets/shapesworld/policy-sft"
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    costs = job_costs(job)
    (out / "README.md").write_text(CARD.format(r=config["r"], backbone=Path(backbone).name, seed=seed,
                                               steps=costs["steps"], images=costs["images"]))
    t0 = time.time()
    info = {"source": str(job), "seed": seed, "backbone": Path(backbone_path(backbone)).name,
            "training_config": training_config, "training_costs": costs,
            "command": command or f"promptloop experiment shapes --out {run} (then this script)",
            "experiment": _experiment_figures(run) if run else None,
            "confirmation": [_confirmation(path) for path in confirm],
            "test_set": test_set_figures(backbone, sft, out)}
    info["test_set_seconds"] = round(time.time() - t0, 1)
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="output folder of `promptloop experiment shapes`")
    source.add_argument("--job", type=Path, help="a GRPO output folder (its adapter/, config.yaml, metrics.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="with --run: training seed whose step-wise adapter ships")
    p.add_argument("--confirm", type=Path, nargs="*", default=[],
                   help="confirm_policy_adapters.py --json files of the recipe (one per held-out set)")
    p.add_argument("--command", default=None, help="how the job was trained (recorded)")
    p.add_argument("--backbone", default="backbone-c", help="backbone the policy was trained on")
    p.add_argument("--out", type=Path, default=ASSETS / "policy-grpo")
    args = p.parse_args(argv)
    info = ship(args.run, args.seed, args.backbone, args.out, job=args.job, confirm=args.confirm,
                command=args.command)
    print(json.dumps(info["test_set"], indent=2))


if __name__ == "__main__":
    main()
