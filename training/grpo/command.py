"""``promptloop train grpo`` (registered on the training CLI's app)."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from promptloop.training.config import field_help
from promptloop.training.grpo.config import GRPOConfig
from promptloop.training.launch import run_trainer

_SET_HELP = ("Override a config field, repeatable: --set learning_rate=5e-5 --set schedule=random:5 "
             "--set lora_target_modules=[q_proj,v_proj]. Values are read as YAML.")


def grpo(
    config: Path = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                help="YAML file of GRPOConfig fields (e.g. training/configs/grpo_tiny.yaml)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help=_SET_HELP),
    resume: str = typer.Option(None, "--resume", help="A checkpoint folder, or 'latest' under output_dir."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    """Train the policy's LoRA adapter with GRPO on rollouts of the real loop.

    Each step samples num_generations images per prompt through the diffusers hook (the policy
    refines at random steps of the schedule), scores the final images with the reward, and
    updates the adapter with the clipped GRPO loss. Progress goes to a tqdm bar,
    OUTPUT_DIR/tensorboard and OUTPUT_DIR/metrics.jsonl; checkpoints to OUTPUT_DIR/checkpoint-N;
    the final adapter to OUTPUT_DIR/adapter, loadable with
    TransformersPolicy.from_pretrained(base, adapter=...), VLLMPolicy and `promptloop serve --adapter`.

    The whole config (values, prompt files, reward spec, local model paths) is checked before
    anything loads: a bad field ends the command with exit status 2 and one line naming it.

    Several processes or GPUs: run this module with `accelerate launch`.
    """
    run_trainer(GRPOConfig, "promptloop.training.grpo.trainer:GRPOTrainer", config, overrides, resume, print_config)


grpo.__doc__ = inspect.cleandoc(grpo.__doc__ or "") + "\n\nConfig fields (defaults): " + field_help(GRPOConfig)


def register(app: typer.Typer) -> None:
    """Add the ``grpo`` command to the training CLI's ``app``."""
    app.command("grpo")(grpo)


__all__ = ["grpo", "register"]
