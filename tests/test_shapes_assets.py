"""The shipped ShapesWorld artefacts: backbones load as plain diffusers pipelines and reach their
recorded held-out reward; the policy start restates held-out prompts validly at its recorded rate;
the demo writes a trace with exact rewards before and after refinement."""

from __future__ import annotations

import json

import pytest

from promptloop.worlds.shapes.backbone import ASSETS, BACKBONES, backbone_path
from promptloop.worlds.shapes.evaluation import TEST_SET, evaluate_backbone

#: Tolerance on re-measured figures: the samplers and the policy are deterministic on CPU, so the
#: figures repeat exactly on one machine; another BLAS's rounding may flip one image of the 16.
BACKBONE_TOLERANCE = 1 / 16 + 0.01
POLICY_TOLERANCE = 1 / 12 + 1e-9  # one example of the 12


def _info(name: str) -> dict:
    return json.loads((ASSETS / name / "training_info.json").read_text())


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_is_a_plain_small_diffusers_pipeline(name):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    path = backbone_path(name)
    sizes = [f.stat().st_size for f in path.rglob("*.safetensors")]
    assert sizes and max(sizes) < 20 * 2**20 and sum(sizes) < 20 * 2**20
    pipe = StableDiffusionPipeline.from_pretrained(path)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, PreTrainedTokenizerFast)
    assert pipe.tokenizer("two red circles").input_ids[1:-1] != [pipe.tokenizer.unk_token_id] * 3


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_reaches_its_recorded_heldout_reward(name):
    from promptloop.worlds.shapes.backbone import load_backbone

    recorded = _info(name)["test_set"]
    measured = evaluate_backbone(load_backbone(name), **TEST_SET)
    for key in ("mean", "color", "shape", "count"):
        assert measured[key] == pytest.approx(recorded[key], abs=BACKBONE_TOLERANCE), (key, measured, recorded)
    # better than an empty canvas, which scores 0, on the same prompts
    assert measured["mean"] > 0.3


def test_backbone_e_reproduces_its_recorded_seeing_headroom():
    """Backbone E (docs/seeing.md) records ``oneshot_rule`` and ``preview_rule`` on the tests' set;
    both, and their difference, are re-measured through the real loop."""
    from promptloop.worlds.shapes.backbone import load_backbone
    from promptloop.worlds.shapes.controllers import headroom_test

    recorded = _info("backbone-e")["headroom_test_set"]
    settings = dict(recorded["settings"])
    measured = headroom_test(load_backbone("backbone-e"), settings.pop("step"), **settings)
    for row in ("oneshot_rule", "preview_rule"):
        assert measured[row]["mean"] == pytest.approx(recorded[row]["mean"], abs=BACKBONE_TOLERANCE), (row, measured)
    assert measured["delta"] == pytest.approx(recorded["delta"], abs=BACKBONE_TOLERANCE)
    assert measured["changed"] > 0  # the preview did show errors and the rule acted on them


def test_policy_restates_heldout_prompts_at_its_recorded_rate():
    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.worlds.shapes.demo import policy_path
    from promptloop.worlds.shapes.tasks import POLICY_TEST_N, evaluate_policy

    recorded = _info("policy-sft")["test_set"]
    policy = TransformersPolicy.from_pretrained(policy_path(), device="cpu", dtype="float32",
                                                sampling=SamplingConfig(max_new_tokens=64))
    measured = evaluate_policy(policy, POLICY_TEST_N)
    for key in ("restate_valid", "restate_faithful", "describe_valid", "describe_color"):
        assert measured[key] == pytest.approx(recorded[key], abs=POLICY_TOLERANCE), (key, measured, recorded)
    assert measured["restate_valid"] > 0


#: The shipped GRPO policy must beat backbone C alone on the tests' fixed held-out set (32 prompts)
#: by the margin recorded (and reported in docs/shapesworld.md), less at most one image's worth.
MARGIN_TOLERANCE = 1 / 32


def test_shipped_grpo_policy_beats_the_backbone_alone_by_its_recorded_margin():
    from promptloop.training.shapes.ship_policy import measure
    from promptloop.worlds.shapes.demo import ADAPTER, adapter_path, policy_path
    from promptloop.worlds.shapes.evaluation import POLICY_TEST_SET

    info = _info(ADAPTER)
    recorded, settings = info["test_set"], {k: info["test_set"]["settings"][k] for k in POLICY_TEST_SET}
    assert settings == POLICY_TEST_SET
    path = adapter_path(ADAPTER)
    assert (path / "adapter_model.safetensors").stat().st_size < 20 * 2**20
    alone = measure(info["backbone"], None, None, POLICY_TEST_SET)
    steered = measure(info["backbone"], policy_path(), path, POLICY_TEST_SET)
    margin = steered["mean"] - alone["mean"]
    assert recorded["margin_vs_backbone"] > 0.05  # what ships is a real gain, not noise
    assert margin >= recorded["margin_vs_backbone"] - MARGIN_TOLERANCE, (margin, recorded)
    assert alone["mean"] == pytest.approx(recorded["backbone"]["mean"], abs=BACKBONE_TOLERANCE)


def test_demo_runs_the_sft_start_alone_on_request(tmp_path):
    from typer.testing import CliRunner

    from promptloop.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--steps", "8", "--adapter", "none",
                                      "--backbone", "backbone-d", "-p", "a green triangle"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "trace.json").read_text())["meta"]
    assert (meta["backbone"], meta["adapter"]) == ("backbone-d", None)
    assert len(meta["rewards"][0]["preview_rewards"]) == 2  # evenly:2 by default on ShapesWorld
    missing = CliRunner().invoke(app, ["demo", "--out", str(out), "--adapter", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "no ShapesWorld adapter" in str(missing.exception)
    assert "the shipped ones are policy-grpo" in str(missing.exception)


def test_demo_writes_a_trace_with_rewards(tmp_path):
    from typer.testing import CliRunner

    from promptloop.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--steps", "8", "--schedule", "evenly:2",
                                      "-p", "two red circles and a blue square", "-p", "a green triangle"])
    assert result.exit_code == 0, result.output
    trace = json.loads((out / "trace.json").read_text())
    assert (trace["meta"]["backbone"], trace["meta"]["adapter"]) == ("backbone-c", "policy-grpo")  # the defaults
    rewards = trace["meta"]["rewards"]
    assert [r["prompt"] for r in rewards] == ["two red circles and a blue square", "a green triangle"]
    for r in rewards:
        assert 0.0 <= r["before"]["mean"] <= 1.0 and 0.0 <= r["after"]["mean"] <= 1.0
        assert len(r["preview_rewards"]) == 2
    assert len(trace["entries"]) == 4 and all(e["preview"] for e in trace["entries"])
    page = (out / "trace.html").read_text()
    assert "Exact reward before / after refinement" in page and "<img" in page
    assert "before:" in result.output and "after:" in result.output
    assert sorted(p.name for p in out.glob("image_*.png")) == [
        "image_00_after.png", "image_00_before.png", "image_01_after.png", "image_01_before.png"]
