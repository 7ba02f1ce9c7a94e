"""Configs of the backbone trainers: :class:`DDPOConfig` and :class:`B2Config`.

Both subclass the shared :class:`promptloop.training.config.TrainConfig` (run, optimiser, LoRA,
checkpoints, logging, reward) and load the same way::

    config = load_config(DDPOConfig, "training/configs/ddpo_tiny.yaml", ["learning_rate=1e-3"])

Field names follow ddpo-pytorch's config where they apply (``sample_batch_size``,
``timestep_fraction``, ``clip_range``, ``adv_clip_max``, ``num_inner_epochs``, ``eta``); the
policy/loop fields of :class:`TrainConfig` (``policy``, ``schedule``, ``mode``, ``preview``) are
not used by these trainers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from promptloop.training.config import TrainConfig
from promptloop.training.diffusion.lora import DEFAULT_UNET_TARGETS

OBJECTIVES = ("is", "sf", "rwr")


@dataclass
class DDPOConfig(TrainConfig):
    """DDPO (Black et al. 2023) on a LoRA adapter of the UNet; defaults are ddpo-pytorch's.

    ``max_steps`` counts epochs: each samples ``sample_num_batches_per_epoch x
    sample_batch_size`` trajectories per process, scores them, then makes ``num_inner_epochs``
    passes of updates over them.
    """

    output_dir: str = "runs/ddpo"
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
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
    # -- optimiser and LoRA ------------------------------------------------------------------
    learning_rate: float = 3e-4
    lora_r: int = 4
    lora_alpha: int = 4
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_UNET_TARGETS))
    #: Held-out evaluation: mean reward on ``eval_prompts`` x ``eval_num_seeds`` fixed seeds every
    #: ``eval_steps`` epochs (0: never).
    eval_num_seeds: int = 2

    def validate(self) -> None:
        super().validate()
        if self.eta <= 0:
            raise ValueError("eta must be > 0 (DDIM with eta = 0 has no log-probability)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.objective == "sf" and self.num_inner_epochs != 1:
            raise ValueError("objective 'sf' is on-policy: use num_inner_epochs: 1 (or objective 'is')")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError("timestep_fraction must be in (0, 1]")
        for name in ("sample_batch_size", "sample_num_batches_per_epoch", "train_batch_size", "num_inner_epochs",
                     "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.clip_range <= 0 or self.adv_clip_max <= 0:
            raise ValueError("clip_range and adv_clip_max must be > 0")


@dataclass
class B2Config(DDPOConfig):
    """B²-DiffuRL (arXiv 2503.11240) on the DDPO-IS optimiser; defaults follow the authors' code
    (hu-zijing/B2-DiffuRL, ``run_process.sh`` and ``config/stage_process.py``).

    ``max_steps`` counts stages; each samples, selects and trains. At stage ``i`` of
    ``schedule_stages`` (default ``max_steps``) the branch point is step index
    ``num_inference_steps - split_step`` with ``split_step = split_step_min +
    floor(i * (split_step_max - split_step_min + 1) / schedule_stages)``.
    """

    output_dir: str = "runs/b2"
    max_steps: int = 100
    schedule_stages: int | None = None
    num_inference_steps: int = 20
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
    sample_batch_size: int = 8
    sample_num_batches_per_epoch: int = 32
    train_batch_size: int = 2
    gradient_accumulation_steps: int = 64
    num_inner_epochs: int = 2
    clip_range: float = 0.1
    adv_clip_max: float = 5.0
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    objective: str = "is"
    per_prompt_stat_tracking: bool = False  # B² uses its stage history instead

    def validate(self) -> None:
        super().validate()
        if self.objective != "is":
            raise ValueError("B2-DiffuRL trains with the DDPO-IS objective (objective: is)")
        if not 1 <= self.split_step_min <= self.split_step_max <= self.num_inference_steps:
            raise ValueError("need 1 <= split_step_min <= split_step_max <= num_inference_steps")
        if self.num_branches < 2:
            raise ValueError("num_branches must be >= 2 (selection compares siblings)")
        if self.neg_threshold > self.pos_threshold:
            raise ValueError("neg_threshold must be <= pos_threshold")


__all__ = ["B2Config", "DDPOConfig", "OBJECTIVES"]
