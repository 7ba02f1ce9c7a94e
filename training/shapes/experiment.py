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

This module is the command and runs the trainings; the sizes, presets and training runs are defined
in :mod:`.jobs`, the evaluation in :mod:`.experiment_eval`, the report in :mod:`.experiment_report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from promptloop.training.shapes import jobs as presets
from promptloop.training.shapes.jobs import TrainingJob, training_jobs


# -- training -----------------------------------------------------------------------------------
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
        check_choice("--preset", preset, sorted(presets.PRESETS))
        check_choice("--stage", stage, ("train", "eval", "report", "all"))
        if parallel is not None:
            check_number("--parallel", parallel, ">= 1", integer=True)
        settings = dataclasses.replace(presets.REDUCED if reduced else presets.PRESETS[preset])
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
