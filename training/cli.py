"""``promptloop train``: the training commands (registered lazily by ``promptloop.cli``). Each
trainer's folder registers its own: :mod:`~promptloop.training.grpo.command` (``grpo``) and
:mod:`~promptloop.training.diffusion.commands` (``ddpo``, ``b2``).

    promptloop train grpo --config training/configs/grpo_tiny.yaml --set max_steps=20
    accelerate launch --multi_gpu --num_processes 2 -m promptloop.training.cli grpo --config my.yaml
"""

from __future__ import annotations

import typer

from promptloop.training.diffusion.commands import register as register_diffusion
from promptloop.training.grpo.command import register as register_grpo

app = typer.Typer(
    name="train",
    help="Train the PromptLoop policy (GRPO) or the backbone (DDPO, B2-DiffuRL) with LoRA adapters as the output.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _train() -> None:
    """Train the PromptLoop policy (GRPO) or the backbone (DDPO, B2-DiffuRL) with LoRA adapters as the output."""


register_grpo(app)
register_diffusion(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
