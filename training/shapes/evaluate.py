"""Measure shipped ShapesWorld artefacts and record the figures in their ``training_info.json``.

    python -m promptloop.training.shapes.evaluate --backbone promptloop/assets/shapesworld/backbone-a
    python -m promptloop.training.shapes.evaluate --policy promptloop/assets/shapesworld/policy-sft

Backbones: per-attribute exact reward on held-out prompts (``heldout``: REPORT_SET; ``test_set``:
the small set the tests re-measure), per prompt style too; with ``--headroom STEP`` also
``oneshot_rule`` and ``preview_rule`` refining at STEP on the tests' small set (``headroom_test_set``,
docs/seeing.md). Policies: held-out naming accuracy and
restatement rates (``heldout``) and the tests' small set (``test_set``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from promptloop.worlds.shapes.evaluation import REPORT_SET, TEST_SET, evaluate_backbone


def _update(path: Path, **figures) -> dict:
    info_path = path / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.update(figures)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def backbone(path: Path, n: int | None = None) -> dict:
    from promptloop.worlds.shapes.backbone import load_backbone

    pipe = load_backbone(str(path))
    t0 = time.time()
    report = dict(REPORT_SET, n=n or REPORT_SET["n"])
    heldout = evaluate_backbone(pipe, **report)
    by_style = {style: evaluate_backbone(pipe, **dict(report, n=report["n"] // 4), styles=(style,))
                for style in ("terse", "full")}
    test_set = evaluate_backbone(pipe, **TEST_SET)
    return _update(path, heldout=heldout, heldout_by_style=by_style, heldout_settings=report,
                   test_set=test_set, test_set_settings=TEST_SET, eval_seconds=round(time.time() - t0, 1))


def headroom(path: Path, step: int) -> dict:
    """``oneshot_rule`` and ``preview_rule`` (refining at ``step``) on :data:`TEST_SET`, and their difference."""
    from promptloop.worlds.shapes.backbone import load_backbone
    from promptloop.worlds.shapes.controllers import headroom_test

    figures = headroom_test(load_backbone(str(path)), step, **TEST_SET)
    return _update(path, headroom_test_set=figures)


def policy(path: Path, n: int = 96) -> dict:
    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.worlds.shapes.tasks import POLICY_TEST_N, evaluate_policy

    refiner = TransformersPolicy.from_pretrained(path, device="cpu", dtype="float32",
                                                 sampling=SamplingConfig(max_new_tokens=64))
    return _update(path, heldout=evaluate_policy(refiner, n), test_set=evaluate_policy(refiner, POLICY_TEST_N))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", type=Path, action="append", default=[])
    p.add_argument("--policy", type=Path, action="append", default=[])
    p.add_argument("--n", type=int, default=None, help="held-out prompts (default: REPORT_SET / 96)")
    p.add_argument("--headroom", type=int, default=None, metavar="STEP",
                   help="also record oneshot_rule and preview_rule (refining at STEP) on the tests' set")
    args = p.parse_args(argv)
    for path in args.backbone:
        info = backbone(path, args.n)
        if args.headroom is not None:
            info = headroom(path, args.headroom)
            print(path, json.dumps(info["headroom_test_set"], indent=2))
        print(path, json.dumps({k: info[k] for k in ("heldout", "heldout_by_style", "test_set")}, indent=2))
    for path in args.policy:
        info = policy(path, args.n or 96)
        print(path, json.dumps({k: info[k] for k in ("heldout", "test_set")}, indent=2))


if __name__ == "__main__":
    main()
