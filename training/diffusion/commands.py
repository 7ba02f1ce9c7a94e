"""``promptloop train ddpo`` and ``promptloop train b2`` (registered on the training CLI's app)."""

from __future__ import annotations

from pathlib import Path

import typer

from promptloop.training.config import field_help, load_config
from promptloop.training.diffusion.config import B2Config, DDPOConfig

_SET_HELP = ("Override a config field, repeatable: --set learning_rate=1e-4 --set max_steps=20 "
             "--set cfg=false. Values are read as YAML.")


def _run(cls, trainer_path: str, config: Path | None, overrides: list[str], resume: str | None,
         print_config: bool) -> None:
    import importlib

    import yaml

    extra = list(overrides)
    if resume:
        extra.append(f"resume_from_checkpoint={resume}")
    try:
        cfg = load_config(cls, config, extra)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if print_config:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    module, name = trainer_path.split(":")
    trainer = getattr(importlib.import_module(module), name)(cfg)
    adapter = trainer.train()
    typer.echo(f"adapter written to {adapter} (load it with pipe.load_lora_weights('{adapter}'))")


ConfigOpt = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                         help="YAML file of config fields (e.g. training/configs/ddpo_tiny.yaml).")
SetOpt = typer.Option([], "--set", "-s", help=_SET_HELP)
ResumeOpt = typer.Option(None, "--resume", help="A checkpoint folder, or 'latest' under output_dir.")
PrintOpt = typer.Option(False, "--print-config", help="Print the resolved config and exit.")


def ddpo(config: Path = ConfigOpt, overrides: list[str] = SetOpt, resume: str = ResumeOpt,
         print_config: bool = PrintOpt) -> None:
    """Tune a LoRA adapter of the diffusion UNet with DDPO (IS, SF or RWR).

    Each epoch samples sample_num_batches_per_epoch x sample_batch_size DDIM trajectories (eta > 0,
    log-probs recorded), scores the images with the reward (registry spec, e.g.
    jpeg_compressibility or 'clip:1,aesthetic:0.5'), normalises rewards per prompt, and updates the
    adapter for num_inner_epochs passes. Metrics go to a tqdm bar, OUTPUT_DIR/tensorboard and
    OUTPUT_DIR/metrics.jsonl; checkpoints to OUTPUT_DIR/checkpoint-N (resume with --resume latest);
    the adapter to OUTPUT_DIR/adapter, loadable with pipe.load_lora_weights(OUTPUT_DIR/adapter).

    Several processes or GPUs: accelerate launch -m promptloop.training.cli ddpo --config FILE.
    """
    _run(DDPOConfig, "promptloop.training.diffusion.ddpo:DDPOTrainer", config, overrides, resume, print_config)


def b2(config: Path = ConfigOpt, overrides: list[str] = SetOpt, resume: str = ResumeOpt,
       print_config: bool = PrintOpt) -> None:
    """Tune a LoRA adapter of the diffusion UNet with B2-DiffuRL (arXiv 2503.11240).

    max_steps stages, each: sample one trajectory per prompt up to the branch point
    (num_inference_steps - split_step, split_step rising from split_step_min to split_step_max over
    the stages), continue it in num_branches branches, z-score rewards per prompt over this and
    the last history_stages stages, keep each group's best (z >= pos_threshold) and worst
    (z < neg_threshold) sibling, and train the steps from the branch point on with DDPO-IS
    (clip_range 0.1, advantages clipped at adv_clip_max, no KL). Outputs as for `train ddpo`.
    """
    _run(B2Config, "promptloop.training.diffusion.b2:B2Trainer", config, overrides, resume, print_config)


ddpo.__doc__ = (ddpo.__doc__ or "") + "\n\nConfig fields (defaults): " + field_help(DDPOConfig)
b2.__doc__ = (b2.__doc__ or "") + "\n\nConfig fields (defaults): " + field_help(B2Config)


def register(app: typer.Typer) -> None:
    """Add the ``ddpo`` and ``b2`` commands to the training CLI's ``app``."""
    app.command("ddpo")(ddpo)
    app.command("b2")(b2)


__all__ = ["b2", "ddpo", "register"]
