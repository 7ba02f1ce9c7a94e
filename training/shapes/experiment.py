"""The alignment experiment on ShapesWorld: does step-wise refinement beat no refinement and a
one-shot rewrite?

One command trains and evaluates everything (``promptloop experiment shapes``; see
docs/experiment.md):

* GRPO of the shipped SFT policy on backbone A, step-wise (``random:2`` refinements per
  trajectory) and one-shot (one rewrite before sampling, no preview), with the same budget,
  for every training seed;
* DDPO of a LoRA of backbone A's UNet with the same image budget, for every training seed;
* the evaluation of every row on held-out prompts and several sampling seeds (paired noise):
  (a) backbone alone, (a') SFT policy step-wise, (b) one-shot GRPO, (c) step-wise GRPO in sync,
  async and ahead modes, (d) the (c) policy on backbone B, (e) the DDPO backbone alone and with
  the (c) policy; every row also gets the held-out fidelity metric (f);
* the cost of each trained row (g): sampled images, denoising steps, policy tokens, CPU seconds,
  and the reward gain per 1,000 sampled images.

Every stage is resumable: a finished training (its ``costs.json``) or evaluation cell is never
redone, an interrupted training resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from promptloop.worlds import get_world

ASSETS = get_world("shapes").assets  # the shipped backbones and policy, wherever promptloop is installed
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
        """The run's logged rows by step (a resumed run re-logs some steps: the last one counts)."""
        rows: dict[int, dict[str, float]] = {}
        for line in (self.out / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["step"], {}).update(row)
        return rows

    @property
    def config_file(self) -> Path:
        return CONFIGS / f"{self.kind}_shapes.yaml"

    def settings(self) -> list[str]:
        """The run's ``--set`` overrides."""
        return [f"seed={self.seed}", f"output_dir={self.out}", "progress=false", *self.overrides]

    def check(self) -> None:
        """Validate the run's config as ``promptloop train`` will, without loading anything."""
        from promptloop.training.config import GRPOConfig, load_config
        from promptloop.training.diffusion.config import DDPOConfig

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


def run_trainings(jobs: Sequence[TrainingJob], *, parallel: int = 2, echo=print) -> None:
    """Run the unfinished jobs, ``parallel`` at a time (one thread each); record each one's costs."""
    pending = [j for j in jobs if not j.done]
    for job in jobs:
        if job.done:
            echo(f"  {job.name}: done (reusing {job.adapter})")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    running: dict[int, tuple[TrainingJob, subprocess.Popen, float, Any]] = {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            job = pending.pop(0)
            job.out.mkdir(parents=True, exist_ok=True)
            log = open(job.out.parent / f"{job.name}.log", "a")  # noqa: SIM115 (closed below)
            echo(f"  {job.name}: training (log: {log.name})")
            command = job.command()
            job.resumed = "--resume" in command
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[proc.pid] = (job, proc, time.perf_counter(), log)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        job, proc, start, log = running.pop(pid)
        log.close()
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        if code != 0:
            for _, p, _, lg in running.values():
                p.terminate()
                lg.close()
            raise RuntimeError(f"training {job.name} failed (exit {code}); see {job.out.parent / (job.name + '.log')}")
        _record_costs(job, cpu_s=usage.ru_utime + usage.ru_stime, wall_s=time.perf_counter() - start)
        echo(f"  {job.name}: done in {time.perf_counter() - start:.0f} s")


def _record_costs(job: TrainingJob, *, cpu_s: float, wall_s: float) -> None:
    """Images, denoising steps and policy tokens from the run's config and metrics; the CPU and
    wall time of the training process."""
    import yaml

    config = yaml.safe_load((job.out / "config.yaml").read_text())
    train_rows = {step: r for step, r in job.metrics().items() if any(k.startswith("train/") for k in r)}
    steps = len(train_rows)
    if job.kind == "grpo":
        images = steps * config["per_device_prompts"] * config["num_generations"]
        tokens = sum(r.get("train/completion_length", 0.0) * r.get("train/actions", 0.0) for r in train_rows.values())
    else:
        images = steps * config["sample_batch_size"] * config["sample_num_batches_per_epoch"]
        tokens = 0.0
    costs = {"steps": steps, "images": images, "denoising_steps": images * config["num_inference_steps"],
             "policy_tokens": round(tokens), "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1),
             # an interrupted run's earlier attempts are not counted in cpu_s / wall_s
             "resumed": job.resumed}
    job.costs_file.write_text(json.dumps(costs, indent=2))


def curves(job: TrainingJob) -> list[dict[str, float]]:
    """The training-time evaluations of a run: step, held-out reward, held-out fidelity."""
    return [{"step": step, "reward": r["eval/reward"], "fidelity": r.get("eval/metric/shapes_fidelity")}
            for step, r in sorted(job.metrics().items()) if "eval/reward" in r]


# -- command ------------------------------------------------------------------------------------

app = typer.Typer(name="experiment", help="Experiments that train and evaluate end to end.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _experiment() -> None:
    """Experiments that train and evaluate end to end."""


@app.command("shapes")
def shapes(
    out: Annotated[Path, typer.Option("--out", help="Output folder (resumable).")] = Path("runs/experiment-shapes"),
    reduced: Annotated[bool, typer.Option("--reduced", help="The CI-sized setting: 1 seed, 1 step, 2 prompts.")] = False,
    preset: Annotated[str, typer.Option("--preset", help="full (the reported CPU run, backbones A/B), descriptive "
                                                         "(the same on backbones C/D, trained on descriptive "
                                                         "captions), reduced (CI) or gpu (10x budget on CUDA; "
                                                         "not run here).")] = "full",
    stage: Annotated[str, typer.Option("--stage", help="train, eval, report or all.")] = "all",
    parallel: Annotated[int | None, typer.Option("--parallel", help="Trainings side by side (default 2).")] = None,
) -> None:
    """The alignment experiment on ShapesWorld (docs/experiment.md): GRPO step-wise vs one-shot vs
    no refinement, DDPO composition, generalisation to backbone B, held-out metric and costs."""
    from promptloop.validation import check_choice, check_model, check_number, exit_on_config_error

    with exit_on_config_error():  # every run's config is checked before anything trains: one line, exit 2
        check_choice("--preset", preset, sorted(PRESETS))
        check_choice("--stage", stage, ("train", "eval", "report", "all"))
        if parallel is not None:
            check_number("--parallel", parallel, ">= 1", integer=True)
        settings = dataclasses.replace(REDUCED if reduced else PRESETS[preset])
        if parallel:
            settings.parallel = parallel
        jobs = training_jobs(settings, out / "train")
        for job in jobs:
            job.check()
        check_model("backbone_b", settings.backbone_b, kind="backbone")
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2))
    start = time.perf_counter()
    if stage in ("train", "all"):
        typer.echo(f"training {len(jobs)} runs, {settings.parallel} at a time ...")
        run_trainings(jobs, parallel=settings.parallel, echo=typer.echo)
    report = None
    if stage in ("eval", "all"):
        from promptloop.training.shapes.experiment_eval import run_evaluation

        report = run_evaluation(settings, jobs, out, echo=typer.echo)
    if stage in ("report", "all"):
        from promptloop.training.shapes.experiment_report import write_report

        write_report(settings, jobs, out, report=report, echo=typer.echo)
    typer.echo(f"done in {time.perf_counter() - start:.0f} s; see {out / 'results.md'}")
