"""Training configurations: the shared base dataclass, YAML files and ``--set key=value`` overrides.

:class:`TrainConfig` holds what every trainer uses (run, models, data, the backbone's sampling,
reward, optimiser, LoRA, checkpoints, logging, evaluation); each trainer's folder subclasses it:
``promptloop.training.grpo.config.GRPOConfig`` (the policy, its refine schedule, mode and preview,
TRL's names) and ``promptloop.training.diffusion.config.DDPOConfig`` / ``B2Config``. A subclass
that only changes an inherited default says so with :func:`inherited_defaults`.

    config = load_config(GRPOConfig, "training/configs/grpo_tiny.yaml", ["learning_rate=1e-4"])

:meth:`TrainConfig.validate` checks every field before anything loads (numeric intervals in each
class's ``RANGES``, choices, consistency; with ``inputs`` also prompt files, local model paths and the
reward spec) and raises :class:`~promptloop.validation.ConfigError` naming the first bad field;
``promptloop train`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from promptloop.sampling import SamplingSettings, check_sampling
from promptloop.validation import (
    ConfigError,
    check_choice,
    check_dtype,
    check_model,
    check_prompts,
    check_ranges,
    check_rewards,
)

C = TypeVar("C", bound="TrainConfig")
T = TypeVar("T")


def inherited_defaults(**defaults: Any) -> Callable[[type[T]], type[T]]:
    """Class decorator, applied under ``@dataclass``: new defaults for fields the class inherits.

    Each name is re-declared with the (resolved) type it has in the bases, which is how a dataclass
    changes an inherited default: the field keeps its place, its type for YAML/``--set`` loading
    and its docs where it is declared. A name that is not an inherited field is an error (a plain
    re-declaration with a typo would silently add a field).
    """

    def apply(cls: type[T]) -> type[T]:
        hints = typing.get_type_hints(cls)
        inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)}
        annotations = dict(inspect.get_annotations(cls))
        for name, value in defaults.items():
            if name not in inherited:
                raise TypeError(f"{cls.__name__}: {name!r} is not an inherited dataclass field")
            if name in annotations:
                raise TypeError(f"{cls.__name__}: {name!r} is declared in the class body too")
            annotations[name] = hints[name]
            setattr(cls, name, value)
        cls.__annotations__ = annotations
        return cls

    return apply


# Trainers sample at CPU size by default (10 steps at 64 x 64 px, where ``promptloop eval`` samples
# 20 steps at the pipeline's size), and always at a fixed size (DDPO's trajectories need one).
@dataclass
@inherited_defaults(num_inference_steps=10, height=64, width=64)
class TrainConfig(SamplingSettings):
    """Fields every PromptLoop trainer uses; the backbone's sampling (``num_inference_steps``,
    ``guidance_scale``, ``height``, ``width``) comes from :class:`~promptloop.sampling.SamplingSettings`."""

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
    #: Start from this LoRA adapter instead of a fresh one.
    init_adapter: str | None = None
    dtype: str | None = None
    # -- data -------------------------------------------------------------------------------
    #: Training prompts: a text file (one per line), a comma-free list, or ``tiny`` (built-in).
    prompts: str | list[str] = "tiny"
    #: Held-out prompts for evaluation (same forms); ``tiny-heldout`` takes the last built-in ones.
    eval_prompts: str | list[str] = "tiny-heldout"
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
    #: Evaluate before the first step too (the untrained policy's baseline).
    eval_on_start: bool = False
    progress: bool = True
    #: Every process appends a hash of its trainable weights per step to
    #: ``output_dir/fingerprints-{rank}.jsonl`` (checks that processes stay in sync).
    log_fingerprints: bool = False

    # -- validation -------------------------------------------------------------------------
    #: Interval of every numeric field (``None``: any finite number); subclasses add theirs.
    RANGES: ClassVar[dict[str, str | None]] = {
        "seed": ">= 0", "max_steps": ">= 0", "learning_rate": "> 0", "adam_beta1": "[0, 1)",
        "adam_beta2": "[0, 1)", "weight_decay": ">= 0", "adam_epsilon": "> 0", "warmup_steps": ">= 0",
        "gradient_accumulation_steps": ">= 1", "max_grad_norm": ">= 0", "lora_r": ">= 1", "lora_alpha": "> 0",
        "lora_dropout": "[0, 1)", "save_steps": ">= 0", "save_total_limit": ">= 1", "logging_steps": ">= 0",
        "eval_steps": ">= 0",
    }

    def validate(self, *, inputs: bool = True) -> None:
        """Raise :class:`~promptloop.validation.ConfigError` (a ``ValueError``) for the first field
        that cannot work: values out of range or inconsistent (:meth:`check_values`), then, with
        ``inputs``, prompt files and local model paths that do not exist and reward specs the
        registry does not resolve (:meth:`check_inputs`). Nothing is loaded."""
        self.check_values()
        if inputs:
            self.check_inputs()
        # Last: the names come from transformers, whose import is slow; other errors come first.
        from transformers.trainer_utils import SchedulerType

        check_choice("lr_scheduler_type", self.lr_scheduler_type, [s.value for s in SchedulerType])

    def check_values(self) -> None:
        """Ranges (:attr:`RANGES`), choices and consistency of the values."""
        ranges: dict[str, str | None] = {}
        for cls in reversed(type(self).__mro__):
            ranges.update(vars(cls).get("RANGES", {}))
        hints = typing.get_type_hints(type(self))
        check_ranges(self, ranges, integers=[name for name in ranges if int in _types(hints[name])])
        check_choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("report_to", self.report_to, ("tensorboard", "none"))
        check_dtype("dtype", self.dtype)
        check_sampling(self)
        for name in ("height", "width"):
            if getattr(self, name) is None:
                raise ConfigError(name, None, "trainers sample at a fixed size: give a multiple of 8")
        if not self.output_dir or not isinstance(self.output_dir, str):
            raise ConfigError("output_dir", self.output_dir, "must be a folder name")
        if not self.lora_target_modules or not all(isinstance(m, str) and m for m in self.lora_target_modules):
            raise ConfigError("lora_target_modules", self.lora_target_modules, "must be a non-empty list of module names")
        if not isinstance(self.reward_options, Mapping):
            raise ConfigError("reward_options", self.reward_options, "must map reward names to their options")

    def check_inputs(self) -> None:
        """Files and folders exist, model specs resolve, the reward spec resolves in the registry.
        (Ordered so that a missing file is reported before the slower imports of the registry.)"""
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ConfigError("output_dir", self.output_dir, "is a file, not a folder")
        if self.resume_from_checkpoint not in (None, "latest"):
            from promptloop.training.runtime import _STATE_FILE, is_checkpoint

            if not is_checkpoint(self.resume_from_checkpoint):
                raise ConfigError("resume_from_checkpoint", self.resume_from_checkpoint,
                                  f"is not a checkpoint folder (no {_STATE_FILE}); or use latest")
        check_prompts("prompts", self.prompts)
        check_model("backbone", self.backbone, kind="backbone")
        if self.init_adapter is not None:
            check_model("init_adapter", self.init_adapter, kind="adapter")
        check_rewards("reward", self.reward, self.reward_options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _types(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation admits (``int | None`` -> ``(int, NoneType)``)."""
    return typing.get_args(annotation) or (annotation,)


# -- loading ----------------------------------------------------------------------------------
def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))):
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


def config_from_dict(cls: type[C], data: Mapping[str, Any], *, check_inputs: bool = False) -> C:
    """Build ``cls`` from a mapping, converting types, rejecting unknown keys and validating
    (:meth:`TrainConfig.validate`: values always; files, model paths and rewards with ``check_inputs``).

    Raises :class:`~promptloop.validation.ConfigError` naming the first bad field."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"see `--help` for the {len(known)} fields"
            raise ConfigError(str(key), data[key], f"unknown {cls.__name__} field; {hint}")
    values = {}
    for key, value in data.items():
        try:
            values[key] = _coerce(value, hints[key], key)
        except (TypeError, ValueError):
            raise ConfigError(key, value, f"expected {_type_name(hints[key])}") from None
    config = cls(**values)
    config.validate(inputs=check_inputs)
    return config


def _type_name(annotation: Any) -> str:
    """``int | None`` -> ``"int or null"``, ``list[str]`` -> ``"a list of str"``."""
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "a mapping"
    if typing.get_args(annotation):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", ...}``; values are read as YAML scalars later."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "use key=value")
        out[key.strip()] = value
    return out


def load_config(cls: type[C], path: str | os.PathLike | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = (), *, check_inputs: bool = False) -> C:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides, validated
    (:func:`config_from_dict`; ``check_inputs``: also files, model paths and the reward spec, as
    ``promptloop train`` and the trainers do)."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError("--config", str(path), exc.strerror or "cannot be read") from None
        except yaml.YAMLError as exc:
            raise ConfigError("--config", str(path), f"is not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError("--config", str(path), "the top level must be a mapping of config fields")
        data.update(loaded)
    if isinstance(overrides, Mapping):
        data.update(overrides)
    else:
        for key, value in parse_overrides(overrides).items():
            data[key] = _override_value(value)
    return config_from_dict(cls, data, check_inputs=check_inputs)


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


def parse_flags(cls: type[T], argv: Sequence[str] | None = None, *, description: str | None = None) -> T:
    """A config dataclass from command-line flags, for the scripts that train a world's assets:
    each field ``name`` is the flag ``--name`` with dashes, typed by its annotation (``X | None``:
    optional ``X``; ``bool``: a switch), required when it has no default; ``help`` and
    ``choices`` come from the field's ``metadata``."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = next(t for t in _types(hints[f.name]) if t is not type(None))
        extra = {k: f.metadata[k] for k in ("help", "choices") if k in f.metadata}
        if kind is bool:
            parser.add_argument(flag, action="store_true", **extra)
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag, type=kind, required=True, **extra)
        else:
            parser.add_argument(flag, type=kind, default=f.default, **extra)
    return cls(**vars(parser.parse_args(argv)))


def field_help(cls: type[TrainConfig]) -> str:
    """A compact list of the config fields with their defaults (for ``--help``)."""
    parts = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parts.append(f"{f.name}={default!r}")
    return ", ".join(parts)


def __getattr__(name: str) -> Any:
    """``GRPOConfig`` and ``normalise_scale_rewards`` moved to :mod:`promptloop.training.grpo.config`;
    the old import path keeps working (imported on first use: GRPO's config imports this module)."""
    if name in ("GRPOConfig", "normalise_scale_rewards"):
        from promptloop.training.grpo import config as grpo_config

        return getattr(grpo_config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
