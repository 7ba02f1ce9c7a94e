"""Training configs: YAML + --set overrides with type conversion, clear errors, the CLI's help."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptloop.training.config import load_config
from promptloop.training.grpo.config import GRPOConfig

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1.0e-3\nnum_generations: 8\nschedule: random:5\n")
    config = load_config(GRPOConfig, path, ["num_generations=6", "beta=0.04", "epsilon_high=0.28",
                                            "scale_rewards=false", "lora_target_modules=[q_proj,v_proj]",
                                            "init_adapter=none", "eval_on_start=yes",
                                            "reward_options={clip: {path: /m}}"])
    assert config.learning_rate == 1e-3 and config.num_generations == 6 and config.beta == 0.04
    assert config.schedule == "random:5" and config.clip_high == 0.28
    assert config.scale_rewards is False
    assert config.lora_target_modules == ["q_proj", "v_proj"] and config.init_adapter is None
    assert config.eval_on_start is True and config.reward_options == {"clip": {"path": "/m"}}


@pytest.mark.parametrize("override, message", [
    ("num_generation=4", "unknown GRPOConfig field"),
    ("loss_type=ppo", "loss_type"),
    ("num_generations=1", "num_generations"),
    ("learning_rate=fast", "learning_rate"),
    ("scale_rewards=sometimes", "scale_rewards"),
    ("nothing", "key=value"),
])
def test_bad_values_give_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(GRPOConfig, None, [override])


def test_shipped_presets_load():
    for name in ("grpo_tiny.yaml", "grpo_sd15_qwen25vl3b.yaml"):
        config = load_config(GRPOConfig, ROOT / "training" / "configs" / name)
        assert config.max_steps > 0


def test_cli_help_lists_the_fields_and_print_config_resolves_overrides():
    from typer.testing import CliRunner

    from promptloop.training.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["grpo", "--help"])
    assert result.exit_code == 0 and "--set" in result.output and "num_generations" in result.output
    result = runner.invoke(app, ["grpo", "--config", str(ROOT / "training/configs/grpo_tiny.yaml"),
                                 "--set", "beta=0.1", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "beta: 0.1" in result.output
    result = runner.invoke(app, ["grpo", "--set", "loss_type=ppo", "--print-config"])
    assert result.exit_code != 0 and "loss_type" in result.output


# -- validation of every field (issue 18, item 3) ----------------------------------------------------
def _config_classes():
    from promptloop.training.diffusion.config import B2Config, DDPOConfig

    return [GRPOConfig, DDPOConfig, B2Config]


def _ranges(cls):
    ranges = {}
    for klass in reversed(cls.__mro__):
        ranges.update(vars(klass).get("RANGES", {}))
    return ranges


def _outside(interval):
    """A value just outside ``interval`` (NaN for "any finite number")."""
    if interval is None:
        return float("nan")
    text = interval.replace(" ", "")
    if text.startswith(">="):
        return float(text[2:]) - 1
    if text.startswith(">"):
        return float(text[1:])
    low, high = text[1:-1].split(",")
    return float(low) if text[0] == "(" else float(high) if text[-1] == ")" else float(high) + 1


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_range_and_a_value_outside_it_is_refused(cls):
    import dataclasses
    import math
    import typing

    from promptloop.validation import ConfigError

    hints = typing.get_type_hints(cls)
    numeric = {f.name for f in dataclasses.fields(cls)
               if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],))}
    ranges = _ranges(cls)
    assert numeric == set(ranges), f"fields without a range: {sorted(numeric - set(ranges))}"
    for name, interval in ranges.items():
        value = _outside(interval)
        if int in (typing.get_args(hints[name]) or (hints[name],)) and not math.isnan(value):
            value = int(value)
        with pytest.raises(ConfigError) as info:
            load_config(cls, None, {name: value})
        assert info.value.field == name and str(info.value).startswith(f"{name}="), str(info.value)
        assert "\n" not in str(info.value)


def test_intervals_and_choices_say_what_is_allowed():
    from promptloop.training.diffusion.config import B2Config, DDPOConfig
    from promptloop.validation import ConfigError

    cases = [(GRPOConfig, {"top_p": 0}, "top_p=0.0: must be in (0, 1]"),
             (GRPOConfig, {"lora_dropout": 1.0}, "lora_dropout=1.0: must be in [0, 1)"),
             (GRPOConfig, {"epsilon": 0}, "epsilon=0.0: must be > 0"),
             (GRPOConfig, {"learning_rate": float("inf")}, "learning_rate=inf: must be finite"),
             (GRPOConfig, {"mode": "later"}, "mode='later': must be one of sync, async, ahead"),
             (GRPOConfig, {"schedule": "none"}, "schedule='none': refines nowhere"),
             (GRPOConfig, {"lr_scheduler_type": "cosin"}, "lr_scheduler_type='cosin': must be one of"),
             (GRPOConfig, {"height": 60}, "height=60: must be a multiple of 8"),
             (GRPOConfig, {"preview": "taesd"}, "preview='taesd': must be one of vae, linear"),
             (DDPOConfig, {"timestep_fraction": 0}, "timestep_fraction=0.0: must be in (0, 1]"),
             (DDPOConfig, {"stat_min_count": 32}, "stat_min_count=32: must be <= stat_buffer_size (16)"),
             (B2Config, {"split_step_max": 30}, "split_step_max=30: must be <= num_inference_steps (20)"),
             (B2Config, {"neg_threshold": 0.9}, "neg_threshold=0.9: must be <= pos_threshold (0.5)")]
    for cls, values, message in cases:
        with pytest.raises(ConfigError) as info:
            load_config(cls, None, values)
        assert str(info.value).startswith(message), str(info.value)
    # eval_schedule may refine nowhere (an evaluation of the backbone alone); B2's timings fit.
    assert load_config(GRPOConfig, None, {"eval_schedule": "none"}).eval_schedule == "none"


def test_inputs_files_models_and_rewards_are_checked_only_with_check_inputs(tmp_path, monkeypatch):
    from promptloop.training.diffusion.config import DDPOConfig
    from promptloop.validation import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    missing = {"prompts": "data/missing.txt"}
    assert load_config(GRPOConfig, None, missing).prompts == "data/missing.txt"  # values only
    bad = [
        ({"prompts": "data/missing.txt"}, "prompts='data/missing.txt': no such prompt file"),
        ({"eval_prompts": "missing.txt"}, "eval_prompts='missing.txt'"),
        ({"prompts": []}, "prompts=[]: holds no prompts"),
        ({"backbone": "./sd15"}, "backbone='./sd15': no such local path"),
        ({"backbone": "/abs/sd15"}, "backbone='/abs/sd15'"),
        ({"backbone": "~/sd15"}, "backbone='~/sd15'"),
        ({"backbone": "runs/grpo/adapter"}, "backbone='runs/grpo/adapter'"),  # two slashes: not a hub id
        ({"backbone": "runs/sd15"}, "backbone='runs/sd15'"),  # runs/ exists here: a local path
        ({"backbone": "tiny:sdx"}, "backbone='tiny:sdx': unknown tiny family"),
        ({"backbone": "runs"}, "backbone='runs': is not a saved backbone folder (no model_index.json)"),
        ({"policy": "./policy"}, "policy='./policy'"),
        ({"policy": "runs"}, "policy='runs': is not a saved policy folder (no config.json)"),
        ({"init_adapter": "./adapter"}, "init_adapter='./adapter'"),
        ({"resume_from_checkpoint": "runs"}, "resume_from_checkpoint='runs': is not a checkpoint folder"),
        ({"reward": "nope"}, "reward='nope': unknown reward 'nope'; registered:"),
        ({"reward": "jpeg_compressibility:1,nope:0.5"}, "reward='jpeg_compressibility:1,nope:0.5': unknown reward 'nope'"),
        ({"reward": "jpeg_compressibility:x"}, "reward='jpeg_compressibility:x': bad weight"),
        ({"reward": "jpeg_compressibility", "reward_options": {"clip": {"path": "x"}}},
         "reward_options.clip={'path': 'x'}: 'clip' is not a reward of reward"),
        ({"reward": "clip", "reward_options": {"clip": {"pth": "x"}}}, "reward_options.clip.pth='x': not an option"),
        ({"reward": "clip", "reward_options": {"clip": {"path": "./clip"}}}, "reward_options.clip.path='./clip'"),
        ({"eval_metrics": ["nope"]}, "eval_metrics=['nope']: unknown reward"),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError) as info:
            load_config(GRPOConfig, None, values, check_inputs=True)
        assert message in str(info.value), (values, str(info.value))
    # Hub ids, the built-in names and existing folders pass.
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    (tmp_path / "prompts.txt").write_text("a fox\n")
    good = load_config(GRPOConfig, None, {
        "backbone": "sd", "policy": "Qwen/Qwen2.5-VL-3B-Instruct", "init_adapter": "someone/adapter",
        "prompts": "prompts.txt", "eval_prompts": "shapes-heldout:4", "resume_from_checkpoint": "latest",
        "reward": "jpeg_compressibility:1.0,clip:0.5", "reward_options": {"clip": {"path": "openai/clip-vit-base-patch32"}},
    }, check_inputs=True)
    assert good.backbone == "sd"
    # DDPO has no policy or loop fields (GRPO's config holds them); its held-out prompts are checked
    # only with an evaluation.
    for name in ("policy", "schedule", "eval_schedule", "mode", "preview", "preview_size", "eval_num_prompts"):
        with pytest.raises(ConfigError, match=f"{name}=.*unknown DDPOConfig field"):
            load_config(DDPOConfig, None, {name: "x"})
    load_config(DDPOConfig, None, {"eval_prompts": "missing.txt", "eval_steps": 0}, check_inputs=True)
    with pytest.raises(ConfigError, match="eval_prompts"):
        load_config(DDPOConfig, None, {"eval_prompts": "missing.txt", "eval_steps": 5}, check_inputs=True)


def test_looks_local_keeps_hub_ids():
    from promptloop.validation import looks_local

    for hub in ("Qwen/Qwen2.5-VL-3B-Instruct", "stable-diffusion-v1-5/stable-diffusion-v1-5", "gpt2",
                "THUDM/ImageReward"):
        assert not looks_local(hub), hub
    for local in ("./x", "../x", "/x", "~/x", "a/b/c", "a\\b", "a b", "org/-name", "org/na..me"):
        assert looks_local(local), local


def test_every_shipped_preset_passes_the_full_check_once_its_data_files_exist():
    from promptloop.training.diffusion.config import B2Config, DDPOConfig

    classes = {"grpo": GRPOConfig, "ddpo": DDPOConfig, "b2": B2Config}
    presets = sorted((ROOT / "training" / "configs").glob("*.yaml"))
    assert len(presets) >= 9
    for path in presets:
        cls = classes[path.name.split("_")[0]]
        config = load_config(cls, path)
        # The GPU presets name prompt files the user provides; everything else must resolve.
        config.prompts, config.eval_prompts = "tiny", "tiny-heldout"
        config.validate()


def test_sampling_and_preview_fields_are_declared_once():
    """Eval and the trainers take the sampling fields from the library's dataclasses; the defaults
    that differ are the trainers' CPU sizes, declared as changed defaults (not second fields)."""
    from promptloop.evaluation import EvalSettings
    from promptloop.sampling import PreviewSettings, SamplingSettings
    from promptloop.training import config as base
    from promptloop.training.diffusion.config import DDPOConfig
    from promptloop.validation import ConfigError

    assert issubclass(EvalSettings, SamplingSettings) and issubclass(EvalSettings, PreviewSettings)
    assert issubclass(GRPOConfig, SamplingSettings) and issubclass(GRPOConfig, PreviewSettings)
    assert issubclass(DDPOConfig, SamplingSettings) and not issubclass(DDPOConfig, PreviewSettings)
    evaluation = EvalSettings(prompts=["a fox"], seeds=[0], rewards=["jpeg_compressibility"])
    assert (evaluation.num_inference_steps, evaluation.height, evaluation.preview_size) == (20, None, 112)
    grpo = GRPOConfig()
    assert (grpo.num_inference_steps, grpo.height, grpo.width, grpo.preview_size) == (10, 64, 64, 56)
    assert base.GRPOConfig is GRPOConfig  # the old import path still works
    with pytest.raises(ConfigError, match="height=None: trainers sample at a fixed size"):
        load_config(DDPOConfig, None, {"height": None})
    with pytest.raises(ConfigError, match="preview_size=0: must be >= 1"):
        load_config(GRPOConfig, None, {"preview_size": 0})
