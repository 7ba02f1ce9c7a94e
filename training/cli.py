"""``promptloop train``: the training commands (registered lazily by ``promptloop.cli``).

    promptloop train grpo --config training/configs/grpo_tiny.yaml --set max_steps=20
    accelerate launch --multi_gpu --num_processes 2 -m promptloop.training.cli grpo --config my.yaml
"""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from promptloop.training.config import GRPOConfig, field_help
from promptloop.training.launch import run_trainer

app = typer.Typer(
    name="train",
    help="Train the PromptLoop policy (GRPO) or the backbone (DDPO, B2-DiffuRL) with LoRA adapters as the output.",
    no_args_is_help=True,
    add_completion=False,
)



@app.callback()
def _train() -> None:
    """Train the PromptLoop policy (GRPO) or the backbone (DDPO, B2-DiffuRL) with LoRA adapters as the output."""


_SET_HELP = ("Override a config field, repeatable: --set learning_rate=5e-5 --set schedule=random:5 "
             "--set lora_target_modules=[q_proj,v_proj]. Values are read as YAML.")


@app.command("grpo")
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

# The backbone trainers: `ddpo` and `b2` (LoRA on the diffusion UNet).
from promptloop.training.diffusion.commands import register as _register_diffusion  # noqa: E402

_register_diffusion(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
