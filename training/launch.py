"""What every ``promptloop train`` command does: resolve the config, then run its trainer."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from promptloop.training.config import TrainConfig, load_config
from promptloop.validation import exit_on_config_error


def run_trainer(config_cls: type[TrainConfig], trainer_path: str, config: Path | None, overrides: list[str],
                resume: str | None, print_config: bool, *, load_hint: str = "") -> None:
    """Load ``config_cls`` from ``config`` + ``--set`` overrides (+ ``--resume``), print it or
    train with the trainer class at ``trainer_path`` (``"module:Class"``) and report the adapter.
    ``load_hint`` (with ``{adapter}``) is appended to that report."""
    import yaml

    extra = list(overrides)
    if resume:
        extra.append(f"resume_from_checkpoint={resume}")
    with exit_on_config_error():  # the whole config is checked before anything loads: one line, exit 2
        cfg = load_config(config_cls, config, extra, check_inputs=True)
    if print_config:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    module, name = trainer_path.split(":")
    adapter = getattr(importlib.import_module(module), name)(cfg).train()
    typer.echo(f"adapter written to {adapter}" + load_hint.format(adapter=adapter))
