"""The reward registry: registration, weighted specs, JPEG rewards."""

import numpy as np
import pytest
from PIL import Image

from promptloop.rewards import available_rewards, get_reward, load_reward, parse_reward_spec, register_reward


def _flat_and_noisy():
    flat = Image.new("RGB", (64, 64), (120, 30, 200))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return flat, noisy


def test_jpeg_rewards_order_simple_above_noisy():
    flat, noisy = _flat_and_noisy()
    comp = get_reward("jpeg_compressibility")([flat, noisy], ["a", "b"])
    incomp = get_reward("jpeg_incompressibility")([flat, noisy], ["a", "b"])
    assert comp[0] > comp[1]
    assert incomp[1] > incomp[0]
    assert comp == pytest.approx([-x for x in incomp])


def test_spec_parsing_and_weighted_combination():
    assert parse_reward_spec("jpeg_compressibility:1.0, jpeg_incompressibility:0.5") == {
        "jpeg_compressibility": 1.0, "jpeg_incompressibility": 0.5}
    assert parse_reward_spec("jpeg_compressibility") == {"jpeg_compressibility": 1.0}
    with pytest.raises(ValueError):
        parse_reward_spec("a:x")
    flat, noisy = _flat_and_noisy()
    combined = load_reward("jpeg_compressibility:2.0,jpeg_incompressibility:0.5")
    terms = combined.terms([flat, noisy], ["a", "b"])
    expected = [2.0 * c + 0.5 * i for c, i in zip(terms["jpeg_compressibility"], terms["jpeg_incompressibility"])]
    assert combined([flat, noisy], ["a", "b"]) == pytest.approx(expected)


def test_register_user_reward_with_options():
    @register_reward("test_prompt_length", overwrite=True)
    def prompt_length(scale: float = 1.0):
        return lambda images, prompts, metadata=None: [scale * len(p) for p in prompts]

    assert "test_prompt_length" in available_rewards()
    flat, _ = _flat_and_noisy()
    assert get_reward("test_prompt_length", scale=2.0)([flat], ["abc"]) == [6.0]
    assert load_reward("test_prompt_length:0.5", {"test_prompt_length": {"scale": 2.0}})([flat], ["abc"]) == [3.0]
    with pytest.raises(ValueError):
        register_reward("test_prompt_length")(lambda: None)
    with pytest.raises(KeyError, match="unknown reward"):
        get_reward("no_such_reward")


def test_another_package_registers_a_reward_through_its_entry_point(tmp_path, monkeypatch):
    """A reward from an installed package's ``promptloop.rewards`` entry point, no list edited."""
    import sys

    from promptloop.rewards import registry

    (tmp_path / "my_rewards_pkg.py").write_text(
        "from promptloop.rewards import register_reward\n"
        "@register_reward('prompt_length_from_pkg')\n"
        "def factory():\n"
        "    return lambda images, prompts, metadata=None: [float(len(p)) for p in prompts]\n")
    dist = tmp_path / "my_rewards_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rewards-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[promptloop.rewards]\nlength = my_rewards_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_READ", False)
    monkeypatch.delitem(registry._REGISTRY, "prompt_length_from_pkg", raising=False)
    try:
        assert "prompt_length_from_pkg" in available_rewards()
        assert get_reward("prompt_length_from_pkg")([None, None], ["ab", "abcd"]) == [2.0, 4.0]
    finally:
        registry._REGISTRY.pop("prompt_length_from_pkg", None)
        sys.modules.pop("my_rewards_pkg", None)


def test_the_registry_imports_no_reward_module():
    """Built-ins register from the package's __init__; the registry module imports none of them."""
    import ast
    import inspect

    from promptloop.rewards import registry

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(registry)))
                if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in imported if m.startswith("promptloop")}
