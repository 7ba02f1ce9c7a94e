"""Worlds (promptloop.worlds): the registry, ShapesWorld through the World interface, and a second
world that is one folder, registered through the entry-point group without editing any list."""

from __future__ import annotations

import ast
import csv
import json
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptloop import worlds
from promptloop.cli import app
from promptloop.prompts import load_prompts
from promptloop.validation import ConfigError, check_model, check_prompts
from promptloop.worlds import World, available_worlds, get_world, register_world, resolve_asset

TOY_WORLD = '''
"""A world in one folder: prompt sets, rewards, one shipped backbone under assets/."""

from dataclasses import dataclass

from promptloop.worlds import World, package_assets


@dataclass(frozen=True, kw_only=True)
class ToyWorld(World):
    def prompts(self, prompt_set="train", n=None):
        sets = {"train": ["a red fox", "a blue boat", "a green tree"], "heldout": ["a cup of tea", "a yellow kite"]}
        return sets[prompt_set][:n]


WORLD = ToyWorld(name="toy", title="ToyWorld", docs="tests/test_worlds.py", assets=package_assets("toyworld", "assets"),
                 backbones=("backbone",), default_backbone="backbone", rewards=("jpeg_compressibility",),
                 heldout_metrics=("jpeg_incompressibility",), num_inference_steps=2, guidance_scale=3.0,
                 height=64, width=64)
'''


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory) -> Path:
    """``toyworld/``: ``__init__.py``, ``world.py`` and ``assets/backbone`` (a saved tiny SD pipeline)."""
    from promptloop.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("plugin")
    package = root / "toyworld"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "world.py").write_text(textwrap.dedent(TOY_WORLD))
    save_tiny_pipeline("sd", package / "assets" / "backbone")
    return root


@pytest.fixture
def toy(toy_folder, monkeypatch):
    """The toy world, declared in the ``promptloop.worlds`` entry-point group as a plugin would be."""
    import importlib.metadata

    monkeypatch.syspath_prepend(str(toy_folder))
    entry = EntryPoint(name="toy", value="toyworld.world:WORLD", group=worlds.ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [entry] if kw.get("group") == worlds.ENTRY_POINT_GROUP else real(**kw))
    monkeypatch.setattr(worlds, "_ENTRY_POINTS_READ", False)
    yield
    worlds.unregister_world("toy")


def test_get_world_names_the_registered_ones_and_names_are_checked():
    assert "shapes" in available_worlds()
    assert get_world("shapes") is get_world("shapes")
    with pytest.raises(KeyError, match=r"unknown world 'nope'; registered: .*shapes"):
        get_world("nope")
    shapes = get_world("shapes")
    with pytest.raises(ValueError, match="already registered"):
        register_world(shapes.__class__(name="shapes", title="Again", docs=""))
    for bad in ("tiny", "random", "two-words", "a:b", "Shapes"):
        with pytest.raises(ValueError, match="world name"):
            register_world(World(name=bad, title="x", docs=""))
    with pytest.raises(TypeError):
        register_world("shapes")  # type: ignore[arg-type]


def test_shapes_world_is_what_the_shapes_modules_say():
    from promptloop.worlds.shapes import backbone, demo
    from promptloop.worlds.shapes.evaluation import heldout_prompts, training_prompts

    world = get_world("shapes")
    assert world.rewards == ("shapes",) and world.heldout_metrics == ("shapes_fidelity",)
    assert world.prompts("heldout", 5) == [p for _, p in heldout_prompts(5)] == load_prompts("shapes-heldout:5")
    assert world.prompts("train", 3) == training_prompts(3) == load_prompts("shapes:3")
    assert len(load_prompts("shapes")) == 256 and len(load_prompts("shapes-heldout")) == 64
    assert world.demo_prompts == list(demo.DEMO_PROMPTS) == load_prompts("shapes-demo")
    # One place names the shipped assets: the world; the modules ask it.
    assert backbone.ASSETS == world.assets and world.assets.name == "shapesworld"
    for name in world.backbones:
        assert backbone.backbone_path(name) == world.backbone_path(name) == world.assets / name
        assert (world.backbone_path(name) / "model_index.json").is_file()
    assert demo.policy_path() == world.policy_path() == world.assets / "policy-sft"
    assert demo.adapter_path(demo.ADAPTER) == world.adapter_path("policy-grpo")
    assert demo.ADAPTER == world.default_adapter in world.adapters  # the demo runs the shipped GRPO LoRA
    assert set(world.metrics()) == {"shapes_color", "shapes_shape", "shapes_count", "shapes_size", "shapes_position"}


def test_asset_specs_resolve_through_the_world_and_bad_ones_name_what_is_shipped():
    world = get_world("shapes")
    assert resolve_asset("shapes:backbone-b", "backbone") == str(world.assets / "backbone-b")
    assert resolve_asset("shapes:policy-sft", "policy") == str(world.assets / "policy-sft")
    assert resolve_asset("tiny:sd", "backbone") is None and resolve_asset("org/name", "policy") is None
    check_model("backbone", "shapes:backbone-a", kind="backbone")
    check_model("policy", "shapes:policy-sft", kind="policy")
    check_model("policy_adapter", "shapes:policy-grpo", kind="adapter")
    with pytest.raises(ConfigError, match="ships no asset 'backbone-z'; it ships backbone-a, "):
        check_model("backbone", "shapes:backbone-z", kind="backbone")
    with pytest.raises(ConfigError, match="is a shipped policy, not a backbone"):
        check_model("backbone", "shapes:policy-sft", kind="backbone")
    with pytest.raises(FileNotFoundError, match=r"shipped ones are backbone-a, .*docs/shapesworld\.md"):
        world.backbone_path("no-such-backbone")
    with pytest.raises(ConfigError, match=r"shapes-train, shapes-heldout, shapes-demo"):
        check_prompts("prompts", "shapes-validation")
    with pytest.raises(ConfigError, match="whole number"):
        check_prompts("prompts", "shapes-heldout:x")


def test_a_prompt_file_named_like_a_world_set_is_still_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("shapes-notes.txt").write_text("a red circle\n")
    assert load_prompts("shapes-notes.txt") == ["a red circle"]


def test_library_errors_send_no_one_to_training_scripts():
    """No ``raise`` in the library names a training script or module (point to docs or assets)."""
    root = Path(__file__).resolve().parents[1] / "promptloop"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise):
                text = " ".join(c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if "promptloop.training" in text or "training/" in text:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


def test_a_second_world_is_a_folder(toy, tmp_path):
    """A world declared by a plugin's entry point: its prompt sets, asset specs, ``promptloop eval
    --world`` and ``promptloop demo --world`` work with no edit anywhere in promptloop."""
    assert "toy" in available_worlds()
    world = get_world("toy")
    assert world.title == "ToyWorld" and world.backbone_path() == world.assets / "backbone"
    assert load_prompts("toy-heldout") == ["a cup of tea", "a yellow kite"]
    assert load_prompts("toy:2") == ["a red fox", "a blue boat"]
    check_prompts("prompts", "toy-heldout:1")
    check_model("backbone", "toy:backbone", kind="backbone")

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--world", "toy", "--seeds", "0", "--device", "cpu", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    # The world's default backbone, its held-out prompts, its reward and its held-out metric.
    assert [(r["row"], r["reward"]) for r in table] == [("backbone", "jpeg_compressibility"),
                                                        ("backbone", "jpeg_incompressibility")]
    cell = json.loads((out / "cells" / "backbone__seed0.json").read_text())
    assert cell["final_prompts"] == ["a cup of tea", "a yellow kite"]
    assert cell["costs"]["denoising_steps"] == 2 * 2  # the world's 2 steps, 2 prompts

    demo = CliRunner().invoke(app, ["demo", "--world", "toy", "--out", str(tmp_path / "demo")])
    assert demo.exit_code == 2 and "ToyWorld has no demo" in demo.output


def test_unknown_worlds_are_one_line_errors_listing_the_registered_ones(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--world", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--world='nope': unknown world; registered: " in result.output
    assert "shapes" in result.output and "Traceback" not in result.output
    demo = CliRunner().invoke(app, ["demo", "--world", "nope", "--out", str(tmp_path)])
    assert demo.exit_code == 2 and "choose " in demo.output and "shapes" in demo.output
