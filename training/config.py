"""Training configurations: dataclasses, YAML files and ``--set key=value`` overrides.

:class:`TrainConfig` holds what every trainer shares (run, optimiser, LoRA, checkpoints, logging,
rollout and evaluation settings); :class:`GRPOConfig` adds the policy-gradient fields, named as in
TRL's ``GRPOConfig`` where they apply (``num_generations``, ``beta``, ``epsilon``,
``epsilon_high``, ``loss_type``, ``scale_rewards``, ``num_iterations``,
``max_completion_length``, ``temperature``). The DDPO and B²-DiffuRL configs subclass
:class:`TrainConfig` the same way.

    config = load_config(GRPOConfig, "training/configs/grpo_tiny.yaml", ["learning_rate=1e-4"])
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="TrainConfig")


@dataclass
class TrainConfig:
    """Fields shared by every PromptLoop trainer."""

    # -- run --------------------------------------------------------------------------------
    output_dir: str = "runs/promptloop"
    seed: int = 0
    max_steps: int = 100
    #: "cpu", "cuda" or "auto" (accelerate's choice).
    device: str = "auto"
    #: Mixed precision for accelerate: "no", "fp16" or "bf16".
    mixed_precision: str = "no"
    # -- models -----------------------------------------------------------------------------
    #: Diffusion pipeline: a local ``save_pretrained`` folder, a hub id, or ``tiny:sd`` (built in code).
    backbone: str = "tiny:sd"
    #: Policy model: a local folder, a hub id, ``tiny`` (random tiny Qwen2-VL) or ``tiny-warm``.
    policy: str = "tiny-warm"
    #: Start from this LoRA adapter instead of a fresh one.
    init_adapter: str | None = None
    dtype: str | None = None
    # -- data -------------------------------------------------------------------------------
    #: Training prompts: a text file (one per line), a comma-free list, or ``tiny`` (built-in).
    prompts: str | list[str] = "tiny"
    #: Held-out prompts for evaluation (same forms); ``tiny-heldout`` takes the last built-in ones.
    eval_prompts: str | list[str] = "tiny-heldout"
    # -- sampling of the diffusion model ----------------------------------------------------
    num_inference_steps: int = 10
    guidance_scale: float = 5.0
    height: int = 64
    width: int = 64
    # -- the loop ---------------------------------------------------------------------------
    #: Refine schedule while training (per-sample random steps by default; ``oneshot`` rewrites
    #: the prompt once before sampling, the RePrompt-style baseline).
    schedule: str = "random:2"
    #: Refine schedule for evaluation (the paper infers at equally spaced steps).
    eval_schedule: str = "evenly:2"
    mode: str = "sync"
    preview: str = "vae"
    preview_size: int = 56
    # -- rewards ----------------------------------------------------------------------------
    #: Weighted reward spec from the registry, e.g. ``"jpeg_compressibility"`` or ``"clip:1,aesthetic:0.5"``.
    reward: str = "jpeg_compressibility"
    #: Keyword options per reward name, e.g. ``{"clip": {"path": "openai/clip-vit-base-patch32"}}``.
    reward_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # -- optimisation -----------------------------------------------------------------------
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    # -- LoRA (peft) ------------------------------------------------------------------------
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # -- checkpoints, logging, evaluation ---------------------------------------------------
    save_steps: int = 50
    #: Keep at most this many checkpoints (oldest removed); ``None`` keeps all.
    save_total_limit: int | None = 2
    #: A checkpoint folder, or ``"latest"`` for the newest under ``output_dir``.
    resume_from_checkpoint: str | None = None
    logging_steps: int = 1
    report_to: str = "tensorboard"
    eval_steps: int = 0
    eval_num_prompts: int = 4
    #: Evaluate before the first step too (the untrained policy's baseline).
    eval_on_start: bool = False
    progress: bool = True
    #: Every process appends a hash of its trainable weights per step to
    #: ``output_dir/fingerprints-{rank}.jsonl`` (checks that processes stay in sync).
    log_fingerprints: bool = False

    # -- helpers ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent values."""
        if self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")
        if self.mode not in ("sync", "async", "ahead"):
            raise ValueError(f"mode must be sync, async or ahead, not {self.mode!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError("mixed_precision must be no, fp16 or bf16")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GRPOConfig(TrainConfig):
    """GRPO on the policy's refinements; field names follow TRL's ``GRPOConfig`` where they apply."""

    output_dir: str = "runs/grpo"
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
    #: ``dapo`` (sum / active tokens of the batch).
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
    #: Registry rewards scored at evaluation only, never trained on (held-out metrics that show
    #: reward hacking, e.g. ``shapes_fidelity``); logged as ``eval/metric/<name>``.
    eval_metrics: list[str] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if self.loss_type not in ("grpo", "dr_grpo", "dapo"):
            raise ValueError(f"loss_type must be grpo, dr_grpo or dapo, not {self.loss_type!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (advantages are relative to the group)")
        if self.num_iterations < 1:
            raise ValueError("num_iterations must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 for training (sampling)")
        if self.rollout_backend not in ("transformers", "vllm"):
            raise ValueError("rollout_backend must be transformers or vllm")
        normalise_scale_rewards(self.scale_rewards)

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


# -- loading ----------------------------------------------------------------------------------
def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:  # a value already of one of the types stays as it is
            if isinstance(arg, type) and arg is not type(None) and type(value) is arg:
                return value
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{name}: cannot read {value!r} ({'; '.join(errors)})")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(str(value).strip()) if not isinstance(value, int) else value
    if annotation is float:
        return float(value)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = _parse_yaml_scalar(value) if value.strip().startswith("[") else [
                v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, name) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = _parse_yaml_scalar(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _parse_yaml_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build ``cls`` from a mapping, converting types and rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                         f"known fields: {', '.join(sorted(known))}")
    values = {}
    for key, value in data.items():
        try:
            values[key] = _coerce(value, hints[key], key)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(f"{key}:") else f"{key}: {message}") from None
    config = cls(**values)
    config.validate()
    return config


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", ...}``; values are read as YAML scalars later."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad override {item!r}: use key=value")
        out[key.strip()] = value
    return out


def load_config(cls: type[C], path: str | os.PathLike | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> C:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: the top level must be a mapping of config fields")
        data.update(loaded)
    if isinstance(overrides, Mapping):
        data.update(overrides)
    else:
        for key, value in parse_overrides(overrides).items():
            data[key] = _override_value(value)
    return config_from_dict(cls, data)


def _override_value(text: str) -> Any:
    """A ``--set`` value: YAML-typed when it parses to a list/dict/number/bool/null, else the string."""
    try:
        value = _parse_yaml_scalar(text)
    except Exception:  # noqa: BLE001 - anything unreadable stays a string
        return text
    return value if value is not None or text.strip().lower() in ("null", "none", "~") else text


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def field_help(cls: type[TrainConfig]) -> str:
    """A compact list of the config fields with their defaults (for ``--help``)."""
    parts = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parts.append(f"{f.name}={default!r}")
    return ", ".join(parts)
