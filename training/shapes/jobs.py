"""The ShapesWorld experiment's definitions: its sizes (:class:`ExperimentSettings` and the presets
:data:`FULL`, :data:`DESCRIPTIVE`, :data:`REDUCED`, :data:`GPU`) and its training runs
(:class:`TrainingJob`, :func:`training_jobs`, each one ``promptloop train`` command, and
:func:`curves`, what a finished run logged).

The stages import this module; it imports none of them: :mod:`.experiment` (the command, which
runs the trainings), :mod:`.experiment_eval` (the evaluation) and :mod:`.experiment_report`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from promptloop.worlds import get_world

ASSETS = get_world("shapes").assets  # the shipped backbones and policy, wherever promptloop is installed
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def step_metrics(folder: Path) -> dict[int, dict[str, float]]:
    """A training run's ``metrics.jsonl`` rows merged by step (a resumed run re-logs some steps:
    the last one counts)."""
    rows: dict[int, dict[str, float]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(int(row["step"]), {}).update(row)
    return rows


@dataclass
class ExperimentSettings:
    """Sizes of the experiment. :data:`FULL` is what the docs report; :data:`REDUCED` runs in CI."""

    train_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    grpo_steps: int = 40
    #: DDPO epochs of ``sample_batch_size`` (16) images: the same image budget as GRPO.
    ddpo_steps: int = 40
    #: Training-time evaluation (the reward / held-out metric curves) every N steps, on N prompts.
    curve_every: int = 10
    curve_prompts: int = 32
    eval_prompts: int = 32
    eval_seeds: list[int] = field(default_factory=lambda: [0, 1])
    #: Trainings run side by side (one thread each).
    parallel: int = 2
    num_strips: int = 3
    backbone_a: str = str(ASSETS / "backbone-a")
    backbone_b: str = str(ASSETS / "backbone-b")
    #: How the report names the two backbones (trained on, generalised to).
    backbone_names: list[str] = field(default_factory=lambda: ["A", "B"])
    policy: str = str(ASSETS / "policy-sft")
    #: Extra ``--set`` overrides for every GRPO / DDPO run (e.g. a GPU preset's device).
    grpo_overrides: list[str] = field(default_factory=list)
    ddpo_overrides: list[str] = field(default_factory=list)
    #: Where the evaluation samples (the trainings take theirs from the overrides).
    device: str = "cpu"


FULL = ExperimentSettings()
REDUCED = ExperimentSettings(train_seeds=[0], grpo_steps=1, ddpo_steps=1, curve_every=1, curve_prompts=2,
                             eval_prompts=2, eval_seeds=[0], num_strips=1,
                             grpo_overrides=["per_device_prompts=1", "num_generations=2", "num_inference_steps=8"],
                             ddpo_overrides=["sample_batch_size=2", "train_batch_size=2", "num_inference_steps=8"])

#: What a GPU run would do (not run here): 10x the GRPO/DDPO budget with larger groups, 128
#: held-out prompts x 3 sampling seeds. The shipped SFT policy is tiny; on a GPU also point
#: ``policy`` at a larger SFT start (e.g. Qwen2-VL-2B fine-tuned with training/shapes/policy.py).
GPU = ExperimentSettings(grpo_steps=400, ddpo_steps=400, curve_every=40, eval_prompts=128, eval_seeds=[0, 1, 2],
                         parallel=1, device="cuda",
                         grpo_overrides=["device=cuda", "per_device_prompts=8", "num_generations=8"],
                         ddpo_overrides=["device=cuda", "sample_batch_size=64", "train_batch_size=16"])
#: The same experiment on the backbones trained on descriptive captions (C, and D for (d)): users'
#: short prompts are rare in their training captions, as with DALL-E 3's (docs/experiment.md).
DESCRIPTIVE = dataclasses.replace(FULL, backbone_a=str(ASSETS / "backbone-c"), backbone_b=str(ASSETS / "backbone-d"),
                                  backbone_names=["C", "D"])
PRESETS = {"full": FULL, "descriptive": DESCRIPTIVE, "reduced": REDUCED, "gpu": GPU}


# -- training -----------------------------------------------------------------------------------
@dataclass
class TrainingJob:
    """One ``promptloop train`` run of the experiment."""

    name: str  # e.g. grpo-stepwise-seed0
    kind: str  # grpo | ddpo
    seed: int
    out: Path
    overrides: list[str]
    resumed: bool = False  # this attempt resumed an interrupted run

    @property
    def adapter(self) -> Path:
        return self.out / "adapter"

    @property
    def costs_file(self) -> Path:
        return self.out / "costs.json"

    @property
    def done(self) -> bool:
        return self.costs_file.exists() and self.adapter.exists()

    def metrics(self) -> dict[int, dict[str, float]]:
        """The run's logged rows by step (:func:`step_metrics`)."""
        return step_metrics(self.out)

    @property
    def config_file(self) -> Path:
        return CONFIGS / f"{self.kind}_shapes.yaml"

    def settings(self) -> list[str]:
        """The run's ``--set`` overrides."""
        return [f"seed={self.seed}", f"output_dir={self.out}", "progress=false", *self.overrides]

    def check(self) -> None:
        """Validate the run's config as ``promptloop train`` will, without loading anything."""
        from promptloop.training.config import load_config
        from promptloop.training.diffusion.config import DDPOConfig
        from promptloop.training.grpo.config import GRPOConfig

        load_config(GRPOConfig if self.kind == "grpo" else DDPOConfig, self.config_file, self.settings(),
                    check_inputs=True)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "promptloop.cli", "train", self.kind, "--config", str(self.config_file)]
        for item in self.settings():
            cmd += ["--set", item]
        if any(p.name.startswith("checkpoint-") for p in self.out.glob("checkpoint-*")):
            cmd += ["--resume", "latest"]
        return cmd


def training_jobs(settings: ExperimentSettings, out: Path) -> list[TrainingJob]:
    s = settings
    curve = [f"eval_steps={s.curve_every}", f"eval_num_prompts={s.curve_prompts}",
             f"save_steps={max(1, s.curve_every)}"]
    jobs = []
    for seed in s.train_seeds:
        for variant, extra in (("stepwise", []), ("oneshot", ["schedule=oneshot", "eval_schedule=oneshot"])):
            jobs.append(TrainingJob(f"grpo-{variant}-seed{seed}", "grpo", seed, out / f"grpo-{variant}-seed{seed}",
                                    [f"max_steps={s.grpo_steps}", f"backbone={s.backbone_a}", f"policy={s.policy}",
                                     *curve, *extra, *s.grpo_overrides]))
        jobs.append(TrainingJob(f"ddpo-seed{seed}", "ddpo", seed, out / f"ddpo-seed{seed}",
                                [f"max_steps={s.ddpo_steps}", f"backbone={s.backbone_a}",
                                 f"save_steps={max(1, s.ddpo_steps // 2)}", *s.ddpo_overrides]))
    return jobs


def curves(job: TrainingJob) -> list[dict[str, float]]:
    """The training-time evaluations of a run: step, held-out reward, held-out fidelity."""
    return [{"step": step, "reward": r["eval/reward"], "fidelity": r.get("eval/metric/shapes_fidelity")}
            for step, r in sorted(job.metrics().items()) if "eval/reward" in r]


__all__ = ["CONFIGS", "DESCRIPTIVE", "FULL", "GPU", "PRESETS", "REDUCED", "ExperimentSettings", "TrainingJob",
           "curves", "training_jobs"]
