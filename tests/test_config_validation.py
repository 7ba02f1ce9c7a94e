"""Bad input to `promptloop train grpo|ddpo|b2`, `eval` and `experiment` ends before anything loads:
exit status 2 and one line naming the field and the value (issue 18, item 3).

The commands run in process through the top-level CLI, with every model loader (and the trainer
classes themselves) replaced by ones that fail the test if called, so an error found only after
loading would show as a failure here, not as a slow pass.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
from typer.testing import CliRunner

from promptloop.cli import app

runner = CliRunner()
TRAINERS = {"grpo": "promptloop.training.grpo.trainer:GRPOTrainer",
            "ddpo": "promptloop.training.diffusion.ddpo:DDPOTrainer",
            "b2": "promptloop.training.diffusion.b2:B2Trainer"}


class Loaded(AssertionError):
    """Something loaded although the config was bad."""


@pytest.fixture
def nothing_loads(monkeypatch):
    """Trainers, backbone/policy/reward loaders and the evaluation runner fail if called; the
    trainers are stand-ins that record their config (so a good config is seen to get through)."""
    built = []

    def refuse(*args, **kwargs):
        raise Loaded("a model was loaded before the config was checked")

    for kind, target in TRAINERS.items():
        module, name = target.split(":")

        class Trainer:
            def __init__(self, config, _kind=kind):
                built.append((_kind, config))

            def train(self):
                return "stand-in-adapter"

        monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{name: Trainer}))
    import promptloop.backbones.loading
    import promptloop.evaluation.runner
    import promptloop.rewards.registry
    import promptloop.specs

    for module, name in [(promptloop.specs, "load_backbone"), (promptloop.specs, "policy_base_path"),
                         (promptloop.backbones.loading, "load_pipeline"), (promptloop.rewards.registry, "get_reward"),
                         (promptloop.evaluation.runner, "load_row_models"), (promptloop.evaluation.runner, "evaluate")]:
        monkeypatch.setattr(module, name, refuse)
    return built


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _cases(tmp_path):
    """The issue's cases: (overrides, words the error line must hold)."""
    return {
        "negative learning rate": (["learning_rate=-0.001"], ["learning_rate", "-0.001"]),
        "missing prompt file": ([f"prompts={tmp_path}/missing.txt"], ["prompts", "missing.txt"]),
        "unknown reward": (["reward=jpeg_compressibility:1,no_such_reward:0.5"], ["reward", "no_such_reward"]),
        "missing local backbone": ([f"backbone={tmp_path}/no-such-backbone"], ["backbone", "no-such-backbone"]),
    }


@pytest.mark.parametrize("case", ["negative learning rate", "missing prompt file", "unknown reward",
                                  "missing local backbone"])
@pytest.mark.parametrize("kind", ["grpo", "ddpo", "b2"])
def test_bad_training_input_is_one_line_and_exit_2_before_anything_loads(kind, case, tmp_path, nothing_loads):
    overrides, needles = _cases(tmp_path)[case]
    args = ["train", kind, "--set", f"output_dir={tmp_path}/run"]
    for item in overrides:
        args += ["--set", item]
    _one_line_error(runner.invoke(app, args), *needles)
    assert nothing_loads == []


@pytest.mark.parametrize("kind", ["grpo", "ddpo", "b2"])
def test_a_good_config_gets_through_to_the_trainer(kind, tmp_path, nothing_loads):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n# a comment\na blue square\n")
    result = runner.invoke(app, ["train", kind, "--set", f"output_dir={tmp_path}/run", "--set", f"prompts={prompts}",
                                 "--set", "reward=jpeg_compressibility:1,jpeg_incompressibility:0.5"])
    assert result.exit_code == 0, result.output
    assert "stand-in-adapter" in result.output
    assert [k for k, _ in nothing_loads] == [kind] and nothing_loads[0][1].prompts == str(prompts)


def test_grpo_policy_path_and_hub_ids(tmp_path, nothing_loads):
    base = ["train", "grpo", "--set", f"output_dir={tmp_path}/run"]
    _one_line_error(runner.invoke(app, [*base, "--set", "policy=./no/such/policy"]), "policy", "./no/such/policy")
    # Hub ids are not local paths: they stay allowed (the hub client fetches and checks them).
    result = runner.invoke(app, [*base, "--set", "policy=Qwen/Qwen2.5-VL-3B-Instruct",
                                 "--set", "backbone=stable-diffusion-v1-5/stable-diffusion-v1-5"])
    assert result.exit_code == 0, result.output
    assert nothing_loads[0][1].policy == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_unknown_field_and_bad_type_are_one_line_too(tmp_path, nothing_loads):
    base = ["train", "ddpo", "--set", f"output_dir={tmp_path}/run"]
    line = _one_line_error(runner.invoke(app, [*base, "--set", "learnin_rate=1e-3"]), "learnin_rate")
    assert "did you mean learning_rate" in line
    _one_line_error(runner.invoke(app, [*base, "--set", "sample_batch_size=many"]), "sample_batch_size", "many")
    _one_line_error(runner.invoke(app, [*base, "--resume", str(tmp_path / "nope")]), "resume_from_checkpoint")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: [1, 2\n")
    _one_line_error(runner.invoke(app, [*base, "--config", str(bad_yaml)]), "--config", "bad.yaml")
    assert nothing_loads == []


# -- promptloop eval ------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needles", [
    (["--prompts", "PROMPTS/missing.txt"], ["prompts", "missing.txt"]),
    (["--rewards", "jpeg_compressibility,no_such_reward"], ["rewards", "no_such_reward"]),
    (["--backbone-adapter", "PROMPTS/no-such-adapter"], ["backbone_adapter", "no-such-adapter"]),
    (["--policy", "./no/such/policy"], ["policy", "./no/such/policy"]),
    (["--steps", "0"], ["num_inference_steps", "0"]),
    (["--guidance", "-1"], ["guidance_scale", "-1"]),
    (["--size", "60"], ["height", "60", "multiple of 8"]),
    (["--seeds", "0,0"], ["seeds", "distinct"]),
    (["--mode", "later"], ["--mode", "later"]),
    (["--schedule", "sometimes"], ["--schedule", "sometimes"]),
])
def test_bad_eval_input_is_one_line_and_exit_2_before_anything_loads(extra, needles, tmp_path, nothing_loads):
    extra = [e.replace("PROMPTS", str(tmp_path)) for e in extra]
    result = runner.invoke(app, ["eval", "--backbone", "tiny:sd", "--out", str(tmp_path / "eval"), *extra])
    _one_line_error(result, *needles)


def test_bad_eval_backbone_and_config_file(tmp_path, nothing_loads):
    _one_line_error(runner.invoke(app, ["eval", "--backbone", str(tmp_path / "missing-backbone")]),
                    "backbone", "missing-backbone")
    config = tmp_path / "eval.yaml"
    config.write_text("rows:\n  - {name: a, backbone: tiny:sd, polcy: tiny}\nsettings: {seeds: [0]}\n")
    _one_line_error(runner.invoke(app, ["eval", "--config", str(config)]), "rows[0].polcy")
    config.write_text("rows:\n  - {name: a, backbone: tiny:sd}\nsettings: {seeds: [0], rewards: [clip],\n"
                      "  reward_options: {clip: {path: ./no/clip}}}\n")
    _one_line_error(runner.invoke(app, ["eval", "--config", str(config)]), "reward_options.clip.path", "./no/clip")


# -- promptloop experiment ------------------------------------------------------------------------
def test_bad_experiment_input_is_one_line_and_exit_2_before_anything_trains(tmp_path, monkeypatch, nothing_loads):
    from promptloop.training.shapes import experiment, jobs

    def refuse(*args, **kwargs):
        raise Loaded("a training started before the configs were checked")

    monkeypatch.setattr(experiment, "run_trainings", refuse)
    out = ["--out", str(tmp_path / "exp")]
    _one_line_error(runner.invoke(app, ["experiment", "shapes", "--preset", "huge", *out]), "--preset", "huge")
    _one_line_error(runner.invoke(app, ["experiment", "shapes", "--parallel", "0", *out]), "--parallel")
    bad = dataclasses.replace(jobs.REDUCED, grpo_overrides=[*jobs.REDUCED.grpo_overrides, "learning_rate=-1"])
    monkeypatch.setattr(jobs, "REDUCED", bad)
    _one_line_error(runner.invoke(app, ["experiment", "shapes", "--reduced", *out]), "learning_rate", "-1")
    missing = dataclasses.replace(jobs.REDUCED, grpo_overrides=[], backbone_b=str(tmp_path / "no-backbone-b"))
    monkeypatch.setattr(jobs, "REDUCED", missing)
    _one_line_error(runner.invoke(app, ["experiment", "shapes", "--reduced", *out]), "backbone_b", "no-backbone-b")
    assert not (tmp_path / "exp").exists()
