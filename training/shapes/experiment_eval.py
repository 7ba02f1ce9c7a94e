"""The evaluation stage of the ShapesWorld experiment: every row on the same held-out prompts and
noise (``promptloop eval``'s machinery), cells saved under ``<out>/eval/cells`` and reused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from promptloop.training.shapes.jobs import ExperimentSettings, TrainingJob
from promptloop.worlds.shapes.evaluation import STEPWISE_SCHEDULE

#: The per-attribute columns (the ``shapes`` reward is their mean over the attributes a prompt
#: constrains), as named by :func:`promptloop.worlds.shapes.evaluation.attribute_metrics`.
ATTRIBUTES = ("shapes_color", "shapes_shape", "shapes_count", "shapes_size", "shapes_position")
REWARDS = ("shapes", "shapes_fidelity")
#: Evaluation schedule of every step-wise row (the training-time evaluation uses the same).
EVAL_SCHEDULE = STEPWISE_SCHEDULE


def experiment_rows(settings: ExperimentSettings, jobs: Sequence[TrainingJob]) -> list:
    """(a), (a'), (a-B), and per training seed (b), (c) in three modes, (d), (e), (e+c)."""
    from promptloop.evaluation import EvalRow

    s = settings
    by_name = {j.name: j for j in jobs}
    rows = [EvalRow("a", s.backbone_a),
            EvalRow("a-sft", s.backbone_a, policy=s.policy, schedule=EVAL_SCHEDULE),
            EvalRow("a-sft-oneshot", s.backbone_a, policy=s.policy, schedule="oneshot"),
            EvalRow("a-B", s.backbone_b)]
    for seed in s.train_seeds:
        step = str(by_name[f"grpo-stepwise-seed{seed}"].adapter)
        one = str(by_name[f"grpo-oneshot-seed{seed}"].adapter)
        ddpo = str(by_name[f"ddpo-seed{seed}"].adapter)
        rows += [EvalRow(f"b.seed{seed}", s.backbone_a, policy=s.policy, policy_adapter=one, schedule="oneshot"),
                 *[EvalRow(f"c-{mode}.seed{seed}", s.backbone_a, policy=s.policy, policy_adapter=step,
                           schedule=EVAL_SCHEDULE, mode=mode) for mode in ("sync", "async", "ahead")],
                 EvalRow(f"d.seed{seed}", s.backbone_b, policy=s.policy, policy_adapter=step, schedule=EVAL_SCHEDULE),
                 EvalRow(f"e.seed{seed}", s.backbone_a, backbone_adapter=ddpo),
                 EvalRow(f"e+c.seed{seed}", s.backbone_a, backbone_adapter=ddpo, policy=s.policy,
                         policy_adapter=step, schedule=EVAL_SCHEDULE)]
    return rows


def eval_settings(settings: ExperimentSettings):
    from promptloop.evaluation import EvalSettings
    from promptloop.worlds.shapes.evaluation import attribute_metrics

    return EvalSettings(prompts=f"shapes-heldout:{settings.eval_prompts}", seeds=list(settings.eval_seeds),
                        rewards=list(REWARDS), metrics=attribute_metrics(), num_inference_steps=20,
                        guidance_scale=4.0, height=64, width=64, preview="vae", preview_size=112,
                        num_strips=settings.num_strips, max_new_tokens=64, device=settings.device,
                        dtype="float32" if settings.device == "cpu" else None)


def run_evaluation(settings: ExperimentSettings, jobs: Sequence[TrainingJob], out: Path, *, echo=print):
    """Evaluate every row (finished cells are reused); returns the :class:`EvalReport`."""
    from promptloop.evaluation import evaluate

    rows = experiment_rows(settings, jobs)
    ready = [r for r in rows if all(Path(p).exists() for p in (r.policy_adapter, r.backbone_adapter) if p)]
    if len(ready) < len(rows):
        echo(f"skipping {len(rows) - len(ready)} rows whose trainings have not finished")
    rows = ready
    echo(f"evaluating {len(rows)} rows x {len(settings.eval_seeds)} seeds on "
         f"{settings.eval_prompts} held-out prompts ...")
    return evaluate(rows, eval_settings(settings), out / "eval", progress=True, write=False)
