"""Training configs: YAML + --set overrides with type conversion, clear errors, the CLI's help."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptloop.training.config import GRPOConfig, load_config

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
