"""The node pack's contract with ComfyUI, checked without ComfyUI (it is not on PyPI)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

import promptloop.comfy_nodes as pack
from promptloop import Trace, TraceEntry
from promptloop.comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from promptloop.comfy_nodes.nodes import PromptLoopScriptedPolicy, PromptLoopTrace, resolve_policy_path
from promptloop.refinement import Observation

PACK_DIR = Path(pack.__file__).resolve().parent
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
CUSTOM_TYPES = {"PROMPTLOOP_POLICY", "PROMPTLOOP_TRACE"}
CORE_TYPES = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE"}


def test_mappings_cover_every_node():
    assert set(NODE_CLASS_MAPPINGS) == {
        "PromptLoopLoadPolicy", "PromptLoopRemotePolicy", "PromptLoopScriptedPolicy", "PromptLoopSampler",
        "PromptLoopTrace",
    }
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    assert all(name.strip() for name in NODE_DISPLAY_NAME_MAPPINGS.values())


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_contract(name):
    cls = NODE_CLASS_MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    assert isinstance(spec, dict) and set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    assert cls.CATEGORY == "PromptLoop"
    assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert set(cls.RETURN_TYPES) <= WIDGET_TYPES | CUSTOM_TYPES | CORE_TYPES
    function = getattr(cls, cls.FUNCTION)
    params = inspect.signature(function).parameters
    inputs = {**spec["required"], **spec.get("optional", {})}
    for input_name, value in inputs.items():
        kind, options = value[0], (value[1] if len(value) > 1 else {})
        assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert input_name in params, f"{name}.{cls.FUNCTION} does not take {input_name}"
        if isinstance(kind, list):
            assert kind and all(isinstance(v, str) for v in kind)
            assert options.get("default", kind[0]) in kind
        else:
            assert kind in WIDGET_TYPES | CUSTOM_TYPES | CORE_TYPES, (input_name, kind)
        if input_name in spec.get("optional", {}):
            assert params[input_name].default is not inspect.Parameter.empty
    required = [p for p, v in params.items() if p != "self" and v.default is inspect.Parameter.empty]
    assert set(required) <= set(spec["required"])


def test_sampler_has_ksampler_inputs_plus_the_loop():
    spec = NODE_CLASS_MAPPINGS["PromptLoopSampler"].INPUT_TYPES()
    required = spec["required"]
    for name in ("model", "clip", "text", "negative", "latent_image", "seed", "steps", "cfg", "sampler_name",
                 "scheduler", "denoise", "policy", "schedule", "mode", "preview"):
        assert name in required, name
    assert required["model"][0] == "MODEL" and required["clip"][0] == "CLIP"
    assert required["negative"][0] == "CONDITIONING" and required["latent_image"][0] == "LATENT"
    assert required["policy"][0] == "PROMPTLOOP_POLICY"
    assert required["mode"][0] == ["sync", "async", "ahead"]
    assert set(required["preview"][0]) == {"linear", "vae", "taesd", "none"}
    assert required["seed"][1]["control_after_generate"] is True
    assert "vae" in spec["optional"] and "async_delay" in spec["optional"]
    cls = NODE_CLASS_MAPPINGS["PromptLoopSampler"]
    assert cls.RETURN_TYPES[:2] == ("LATENT", "PROMPTLOOP_TRACE")


def test_trace_node_outputs_image_and_string():
    cls = NODE_CLASS_MAPPINGS["PromptLoopTrace"]
    assert cls.RETURN_TYPES == ("IMAGE", "STRING")
    assert cls.OUTPUT_NODE is True


def test_pack_imports_without_comfyui():
    """Both ways: as ``promptloop.comfy_nodes`` and as ComfyUI loads a folder from custom_nodes/."""
    code = f"""
import importlib.util, sys
import promptloop.comfy_nodes as p
assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules
path = {str(PACK_DIR)!r}
spec = importlib.util.spec_from_file_location(path.replace('.', '_x_'), path + '/__init__.py')
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert set(module.NODE_CLASS_MAPPINGS) == set(p.NODE_CLASS_MAPPINGS)
for cls in module.NODE_CLASS_MAPPINGS.values():
    cls.INPUT_TYPES()
assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_scripted_policy_lines_and_placeholders():
    (policy,) = PromptLoopScriptedPolicy().build("{current}, detailed\n{original} at step {step}/{num_steps} #{n}\n")
    first = policy.refine([Observation("a fox", "a fox", 3, 10)])[0]
    assert first.text == "a fox, detailed"
    second = policy.refine([Observation("a fox", "a fox, detailed", 5, 10, history=["a fox"])])[0]
    assert second.text == "a fox at step 5/10 #2"  # {step} is 0-based, as in the schedule and the trace
    third = policy.refine([Observation("a fox", "x", 7, 10, history=["a", "b", "c"])])[0]
    assert third.text == "a fox at step 7/10 #4"  # the last line repeats
    plans = policy.plan(["a fox"], [2, 5], 10)
    assert [r.text for r in plans[0]] == ["a fox, detailed", "a fox at step 5/10 #2"]


def test_trace_node_renders_strip_and_text(tmp_path):
    from PIL import Image

    trace = Trace(["a fox"], [TraceEntry(0, 2, 6, "a fox", "a fox, detailed", applied_step=2,
                                         preview=Image.new("RGB", (16, 16), "red"))])
    images = torch.rand(1, 24, 24, 3)
    out = PromptLoopTrace().show(trace, thumb_size=64, save=False, images=images)
    strip, text = out["result"]
    assert strip.ndim == 4 and strip.shape[0] == 1 and strip.shape[-1] == 3 and strip.dtype == torch.float32
    assert 0.0 <= float(strip.min()) and float(strip.max()) <= 1.0
    assert "a fox, detailed" in text
    summary = out["ui"]["promptloop_trace"][0]
    json.dumps(summary)
    assert summary["entries"][0]["prompt_after"] == "a fox, detailed"
    assert out["ui"]["text"] == [text]


def test_resolve_policy_path(tmp_path, monkeypatch):
    from promptloop.comfy_nodes import nodes

    assert resolve_policy_path(str(tmp_path)) == str(tmp_path)
    monkeypatch.setattr(nodes, "hub_unusable", lambda: None)  # a hub that answers: the id is downloaded
    assert resolve_policy_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
    monkeypatch.setattr(nodes, "hub_unusable", lambda: "HF_HUB_OFFLINE is set")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve_policy_path("Qwen/Qwen2.5-VL-3B-Instruct")
    with pytest.raises(ValueError):
        resolve_policy_path("  ")


def test_registry_metadata():
    source = Path(__file__).resolve().parents[2] / "comfy_nodes"  # the folder the registry publishes
    data = tomllib.loads((source / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["name"] and "comfyui" not in project["name"].lower()
    assert project["version"].count(".") == 2
    assert project["urls"]["Repository"].startswith("https://")
    assert [d.split("[")[0] for d in project["dependencies"]] == ["promptloop"]
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy)
    assert (source / "requirements.txt").read_text().count("promptloop") >= 1


def test_pack_loads_as_comfyui_loads_it(tmp_path):
    """A copy of the folder under another name imports on its own (relative imports only)."""
    import shutil

    target = tmp_path / "custom_nodes" / "comfyui-promptloop"
    shutil.copytree(PACK_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    name = str(target).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, target / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert set(module.NODE_CLASS_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_remote_policy_node_builds_the_clients():
    """No request is made: the clients are only constructed (HTTPPolicy / OpenAIChatPolicy)."""
    pytest.importorskip("promptloop.policies.http", reason="the sidecar client has not landed")
    pytest.importorskip("promptloop.policies.openai", reason="the OpenAI-compatible client has not landed")
    from promptloop.comfy_nodes.nodes import PromptLoopRemotePolicy

    node = PromptLoopRemotePolicy()
    (sidecar,) = node.connect("http://127.0.0.1:9", "promptloop", "secret", 5.0)
    assert type(sidecar).__name__ == "HTTPPolicy" and hasattr(sidecar, "refine")
    (openai,) = node.connect("http://127.0.0.1:9/v1", "openai", "", 5.0, model="policy-lora")
    assert type(openai).__name__ == "OpenAIChatPolicy" and openai.model == "policy-lora"
    with pytest.raises(ValueError):
        node.connect("127.0.0.1:9", "promptloop", "", 5.0)
