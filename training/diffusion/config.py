"""Configs of the backbone trainers: :class:`DDPOConfig` and :class:`B2Config`.

Both subclass the shared :class:`promptloop.training.config.TrainConfig` (run, optimiser, LoRA,
checkpoints, logging, reward) and load the same way::

    config = load_config(DDPOConfig, "training/configs/ddpo_tiny.yaml", ["learning_rate=1e-3"])

Field names follow ddpo-pytorch's config where they apply (``sample_batch_size``,
``timestep_fraction``, ``clip_range``, ``adv_clip_max``, ``num_inner_epochs``, ``eta``).
``validate()`` checks every field before anything loads (:attr:`RANGES` per class, then the
consistency rules of :meth:`check_values`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from promptloop.training.config import TrainConfig, inherited_defaults
from promptloop.training.diffusion.lora import DEFAULT_UNET_TARGETS
from promptloop.validation import ConfigError, check_choice, check_prompts

OBJECTIVES = ("is", "sf", "rwr")


@dataclass
@inherited_defaults(output_dir="runs/ddpo", num_inference_steps=50, learning_rate=3e-4, lora_r=4, lora_alpha=4,
                    lora_target_modules=dataclasses.field(default_factory=lambda: list(DEFAULT_UNET_TARGETS)))
class DDPOConfig(TrainConfig):
    """DDPO (Black et al. 2023) on a LoRA adapter of the UNet; defaults are ddpo-pytorch's (those
    of inherited fields in the decorator above).

    ``max_steps`` counts epochs: each samples ``sample_num_batches_per_epoch x
    sample_batch_size`` trajectories per process, scores them, then makes ``num_inner_epochs``
    passes of updates over them.
    """

    #: DDIM noise scale while sampling and in the log-probabilities (> 0; 1.0 is DDPM-like).
    eta: float = 1.0
    #: Classifier-free guidance in sampling *and* training (both passes recomputed with
    #: gradients). ``false`` samples and trains the conditional model alone, as Flow-GRPO's
    #: authors recommend; the ratio stays exact either way because both sides agree.
    cfg: bool = True
    negative_prompt: str = ""
    # -- sampling -----------------------------------------------------------------------------
    sample_batch_size: int = 8
    sample_num_batches_per_epoch: int = 4
    # -- objective ----------------------------------------------------------------------------
    #: ``is``: DDPO-IS (PPO-clipped importance ratio, several inner epochs allowed);
    #: ``sf``: DDPO-SF (score function, -A * log p; on-policy, one inner epoch);
    #: ``rwr``: reward-weighted regression (-w * log p, w = N * softmax(r / rwr_temperature)).
    objective: str = "is"
    train_batch_size: int = 4
    num_inner_epochs: int = 1
    #: Fraction of each trajectory's steps trained on, drawn per sample after a random permutation.
    timestep_fraction: float = 1.0
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    #: Normalise rewards per prompt (buffer of ``stat_buffer_size``, used once it holds
    #: ``stat_min_count``; the batch's mean/std before that); ``false``: batch statistics.
    per_prompt_stat_tracking: bool = True
    stat_buffer_size: int = 16
    stat_min_count: int = 16
    rwr_temperature: float = 1.0
    #: Held-out evaluation: mean reward on ``eval_prompts`` x ``eval_num_seeds`` fixed seeds every
    #: ``eval_steps`` epochs (0: never).
    eval_num_seeds: int = 2

    RANGES: ClassVar[dict[str, str | None]] = {
        "eta": "> 0", "sample_batch_size": ">= 1", "sample_num_batches_per_epoch": ">= 1", "train_batch_size": ">= 1",
        "num_inner_epochs": ">= 1", "timestep_fraction": "(0, 1]", "clip_range": "> 0", "adv_clip_max": "> 0",
        "stat_buffer_size": ">= 1", "stat_min_count": ">= 1", "rwr_temperature": "> 0", "eval_num_seeds": ">= 1",
        "max_grad_norm": "> 0",  # always clipped (0 would zero the gradients)
    }

    def check_values(self) -> None:
        super().check_values()
        check_choice("objective", self.objective, OBJECTIVES)
        if self.objective == "sf" and self.num_inner_epochs != 1:
            raise ConfigError("num_inner_epochs", self.num_inner_epochs,
                              "objective 'sf' is on-policy: use num_inner_epochs: 1 (or objective 'is')")
        if self.per_prompt_stat_tracking and self.stat_min_count > self.stat_buffer_size:
            raise ConfigError("stat_min_count", self.stat_min_count,
                              f"must be <= stat_buffer_size ({self.stat_buffer_size}), or it is never reached")
        if not isinstance(self.negative_prompt, str):
            raise ConfigError("negative_prompt", self.negative_prompt, "must be a string")

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.eval_steps:  # held-out prompts are loaded only when there is an evaluation
            check_prompts("eval_prompts", self.eval_prompts)


@dataclass
@inherited_defaults(
    output_dir="runs/b2", max_steps=100, num_inference_steps=20, sample_batch_size=8, sample_num_batches_per_epoch=32,
    train_batch_size=2, gradient_accumulation_steps=64, num_inner_epochs=2, clip_range=0.1, adv_clip_max=5.0,
    learning_rate=1e-4, weight_decay=1e-4, objective="is",
    per_prompt_stat_tracking=False,  # B² uses its stage history instead
)
class B2Config(DDPOConfig):
    """B²-DiffuRL (arXiv 2503.11240) on the DDPO-IS optimiser; defaults follow the authors' code
    (hu-zijing/B2-DiffuRL, ``run_process.sh`` and ``config/stage_process.py``), those of inherited
    fields in the decorator above.

    ``max_steps`` counts stages; each samples, selects and trains. At stage ``i`` of
    ``schedule_stages`` (default ``max_steps``) the branch point is step index
    ``num_inference_steps - split_step`` with ``split_step = split_step_min +
    floor(i * (split_step_max - split_step_min + 1) / schedule_stages)``.
    """

    schedule_stages: int | None = None
    split_step_min: int = 14
    split_step_max: int = 20
    #: Branches continued from each shared prefix (``split_time`` in the authors' code).
    num_branches: int = 5
    #: Stages of reward history (besides the current one) in the per-prompt z-scores.
    history_stages: int = 8
    #: Keep a group's best sibling if its z-score >= pos_threshold, its worst if < neg_threshold.
    pos_threshold: float = 0.5
    neg_threshold: float = -0.5
    #: Advantage weights of kept positive / negative samples (``beta1`` / ``beta2``).
    pos_weight: float = 1.0
    neg_weight: float = 1.0

    RANGES: ClassVar[dict[str, str | None]] = {
        "schedule_stages": ">= 1", "split_step_min": ">= 1", "split_step_max": ">= 1", "num_branches": ">= 2",
        "history_stages": ">= 0", "pos_threshold": None, "neg_threshold": None, "pos_weight": ">= 0",
        "neg_weight": ">= 0",
    }

    def check_values(self) -> None:
        super().check_values()
        if self.objective != "is":
            raise ConfigError("objective", self.objective, "B2-DiffuRL trains with the DDPO-IS objective (objective: is)")
        if self.split_step_max > self.num_inference_steps:
            raise ConfigError("split_step_max", self.split_step_max,
                              f"must be <= num_inference_steps ({self.num_inference_steps})")
        if self.split_step_min > self.split_step_max:
            raise ConfigError("split_step_min", self.split_step_min, f"must be <= split_step_max ({self.split_step_max})")
        if self.neg_threshold > self.pos_threshold:
            raise ConfigError("neg_threshold", self.neg_threshold, f"must be <= pos_threshold ({self.pos_threshold})")


__all__ = ["OBJECTIVES", "B2Config", "DDPOConfig"]
