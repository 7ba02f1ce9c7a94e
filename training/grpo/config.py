"""GRPO's config: :class:`GRPOConfig`, the shared :class:`~promptloop.training.config.TrainConfig`
plus the loop (policy, refine schedules, mode, preview) and the policy-gradient fields, named as in
TRL's ``GRPOConfig`` where they apply (``num_generations``, ``beta``, ``epsilon``,
``epsilon_high``, ``loss_type``, ``scale_rewards``, ``num_iterations``,
``max_completion_length``, ``temperature``). Loads like every trainer's config::

    config = load_config(GRPOConfig, "training/configs/grpo_tiny.yaml", ["learning_rate=1e-4"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from promptloop.sampling import PreviewSettings
from promptloop.training.config import TrainConfig, inherited_defaults
from promptloop.validation import (
    ConfigError,
    check_choice,
    check_model,
    check_prompts,
    check_rewards,
    check_schedule,
)

#: ``lora_target_modules`` presets: the language model's attention and MLP projections (the
#: vision tower is never adapted, see :func:`~promptloop.training.models.load_policy_model`).
LORA_TARGET_PRESETS: dict[str, list[str]] = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "attention+mlp": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


# The preview (:class:`~promptloop.sampling.PreviewSettings`) is 56 px by default here, half of
# ``promptloop eval``'s 112: the CPU-sized default rollouts are 64 px images.
@dataclass
@inherited_defaults(output_dir="runs/grpo", preview_size=56)
class GRPOConfig(PreviewSettings, TrainConfig):
    """GRPO on the policy's refinements; field names follow TRL's ``GRPOConfig`` where they apply."""

    # -- the loop ---------------------------------------------------------------------------
    #: Policy model: a local folder, a hub id, ``tiny`` (random tiny Qwen2-VL) or ``tiny-warm``.
    policy: str = "tiny-warm"
    #: Refine schedule while training (per-sample random steps by default; ``oneshot`` rewrites
    #: the prompt once before sampling, the RePrompt-style baseline).
    schedule: str = "random:2"
    #: Refine schedule for evaluation (the paper infers at equally spaced steps).
    eval_schedule: str = "evenly:2"
    #: ``sync``, ``async`` or ``ahead`` (:class:`promptloop.hook.PromptLoopHook`).
    mode: str = "sync"
    #: Held-out prompts scored at each evaluation (the first of ``eval_prompts``).
    eval_num_prompts: int = 4
    # -- GRPO ---------------------------------------------------------------------------------
    #: Prompts per rollout batch on each process; each is sampled ``num_generations`` times.
    per_device_prompts: int = 2
    #: G: rollouts per prompt (one pipeline call with ``num_images_per_prompt=G``).
    num_generations: int = 4
    #: The G rollouts of a prompt start from the same initial noise, so that their rewards differ
    #: only by what the policy did (the advantage no longer rewards the luck of the noise).
    share_noise: bool = False
    #: KL coefficient to the reference policy (the model with the adapter disabled); 0 skips it.
    beta: float = 0.0
    #: Lower clip range of the token ratio: ``ratio >= 1 - epsilon``.
    epsilon: float = 0.2
    #: Upper clip range (``ratio <= 1 + epsilon_high``); ``None`` uses ``epsilon`` (DAPO uses 0.28).
    epsilon_high: float | None = None
    #: ``grpo`` (mean per sequence), ``dr_grpo`` (sum / (sequences x max_completion_length)),
    #: ``dapo`` (sum / active tokens of the batch), or ``raft``: rejection-sampling fine-tuning
    #: (each group's best rollout, if it beats the others by more than ``reward_tol``, becomes a
    #: supervised target: mean token NLL; no advantages, no ratio).
    loss_type: str = "dapo"
    #: Divide advantages by the reward std: ``"group"`` (or true), ``"batch"``, ``"none"`` (or false).
    scale_rewards: str | bool = "group"
    #: Optimiser updates per rollout batch (PPO-style reuse; 1 = on-policy).
    num_iterations: int = 1
    max_completion_length: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    #: Subtracted from a trajectory's reward for each of its refinements that fell back
    #: (empty, too long, truncated, unparsable output).
    fallback_penalty: float = 0.0
    #: Rollout backend: ``transformers`` or ``vllm`` (the adapter is re-loaded after each update).
    rollout_backend: str = "transformers"
    #: Sampling temperature at evaluation (0 = greedy).
    eval_temperature: float = 0.0
    # -- RL levers (docs/training.md, "Levers") ------------------------------------------------
    #: Rewards closer than this count as equal: a group whose reward std is below it has no
    #: spread (dynamic sampling), a best rollout must beat the others by more (``raft``).
    reward_tol: float = 1e-6
    #: DAPO's dynamic sampling: drop groups whose rewards are all equal and roll out fresh prompts
    #: in their place until the step holds ``per_device_prompts`` groups with a spread.
    dynamic_sampling: bool = False
    #: Extra rollout rounds per step that dynamic sampling may spend (verl: ``max_num_gen_batches``
    #: counts the first one too); 0 only filters.
    max_resample_batches: int = 3
    #: Share of each step's prompts drawn from the replay buffer of prompts the policy got wrong.
    replay_fraction: float = 0.0
    #: A prompt whose group mean reward is below this enters the replay buffer (and leaves it
    #: once a replayed group reaches it).
    replay_threshold: float = 0.5
    #: Most prompts the replay buffer holds (the oldest leave first).
    replay_buffer_size: int = 64
    #: ``trajectory``: every refinement gets its trajectory's advantage. ``refinement``: each
    #: group explores one refinement (sampled at ``temperature``; the others greedy, same noise
    #: and steps), and only that refinement's action is trained.
    credit: str = "trajectory"
    #: Offline difficulty filtering (:mod:`promptloop.training.grpo.screening`): before the first
    #: step, roll out the starting policy once per prompt on the first ``screen_prompts`` training
    #: prompts (greedy, ``eval_schedule``) and train only on those whose reward is below
    #: ``screen_threshold``; 0 trains on every prompt.
    screen_prompts: int = 0
    #: A screened prompt is kept (trained on) when the starting policy's reward is below this.
    screen_threshold: float = 0.9
    #: Registry rewards scored at evaluation only, never trained on (held-out metrics that show
    #: reward hacking, e.g. ``shapes_fidelity``); logged as ``eval/metric/<name>``.
    eval_metrics: list[str] = field(default_factory=list)

    RANGES: ClassVar[dict[str, str | None]] = {
        "eval_num_prompts": ">= 1", "per_device_prompts": ">= 1", "num_generations": ">= 2", "beta": ">= 0",
        "epsilon": "> 0", "epsilon_high": "> 0", "num_iterations": ">= 1", "max_completion_length": ">= 1",
        "temperature": "> 0", "top_p": "(0, 1]", "fallback_penalty": ">= 0", "eval_temperature": ">= 0",
        "reward_tol": ">= 0", "max_resample_batches": ">= 0", "replay_fraction": "[0, 1]",
        "replay_threshold": None, "replay_buffer_size": ">= 1",
        "screen_prompts": ">= 0", "screen_threshold": None,
    }

    def __post_init__(self) -> None:
        # Preset names in lora_target_modules (``attention+mlp``, or ``attention,mlp`` read as a
        # list) become the module names they stand for; other names stay.
        targets = self.lora_target_modules
        if isinstance(targets, (list, tuple)) and any(t in LORA_TARGET_PRESETS for t in targets):
            expanded: list[str] = []
            for name in targets:
                for module in LORA_TARGET_PRESETS.get(name, [name]):
                    if module not in expanded:
                        expanded.append(module)
            self.lora_target_modules = expanded

    def check_values(self) -> None:
        super().check_values()
        check_choice("loss_type", self.loss_type, ("grpo", "dr_grpo", "dapo", "raft"))
        check_choice("credit", self.credit, ("trajectory", "refinement"))
        if self.credit == "refinement":
            if not self.share_noise:
                raise ConfigError("credit", self.credit, "needs share_noise: true (a group shares noise and steps)")
            if self.mode != "sync" or self.schedule.strip().lower() == "oneshot":
                raise ConfigError("credit", self.credit, "needs mode: sync and a step-wise schedule")
        check_choice("rollout_backend", self.rollout_backend, ("transformers", "vllm"))
        check_choice("mode", self.mode, ("sync", "async", "ahead"))
        check_schedule("schedule", self.schedule, refine=True)
        check_schedule("eval_schedule", self.eval_schedule)
        try:
            normalise_scale_rewards(self.scale_rewards)
        except ValueError:
            raise ConfigError("scale_rewards", self.scale_rewards, "must be group, batch or none") from None

    def check_inputs(self) -> None:
        super().check_inputs()
        check_model("policy", self.policy, kind="policy")
        check_prompts("eval_prompts", self.eval_prompts)
        if not isinstance(self.eval_metrics, list):
            raise ConfigError("eval_metrics", self.eval_metrics, "must be a list of reward names")
        if self.eval_metrics:
            check_rewards("eval_metrics", self.eval_metrics)

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def normalise_scale_rewards(value: str | bool) -> str:
    """``True``/``"group"`` -> ``"group"``, ``False``/``"none"`` -> ``"none"``, ``"batch"``."""
    if isinstance(value, bool):
        return "group" if value else "none"
    text = str(value).strip().lower()
    if text in ("true", "group", "yes"):
        return "group"
    if text in ("false", "none", "no"):
        return "none"
    if text == "batch":
        return "batch"
    raise ValueError(f"scale_rewards must be group, batch or none, not {value!r}")


__all__ = ["LORA_TARGET_PRESETS", "GRPOConfig", "normalise_scale_rewards"]
