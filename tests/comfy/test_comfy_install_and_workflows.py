"""``promptloop comfy install`` and the example workflows (API and UI format)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner
from workflow_ui import CORE_NODES, api_to_ui

import promptloop.comfy_nodes as pack
from promptloop.comfy_nodes import NODE_CLASS_MAPPINGS
from promptloop.comfy_nodes.install import PACK_NAME, comfy_app, install

PACK_DIR = Path(pack.__file__).resolve().parent
API_WORKFLOW = PACK_DIR / "api_workflows" / "promptloop_api.json"
TEMPLATES = PACK_DIR / "example_workflows"
# The folders of a pack that ComfyUI serves as workflow templates (app/custom_node_manager.py).
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def fake_comfyui(root: Path) -> Path:
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("")
    (root / "nodes.py").write_text("")
    return root


def test_install_symlink_is_idempotent(tmp_path):
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    target = install(comfy)
    assert target == comfy / "custom_nodes" / PACK_NAME
    assert target.is_symlink() and target.resolve() == PACK_DIR
    assert (target / "__init__.py").is_file()
    assert install(comfy) == target and target.is_symlink()


def test_install_copy_replaces_an_earlier_install(tmp_path):
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    install(comfy)  # symlink first
    target = install(comfy, mode="copy")
    assert target.is_dir() and not target.is_symlink()
    assert (target / "nodes.py").read_text() == (PACK_DIR / "nodes.py").read_text()
    assert (target / "example_workflows" / "promptloop.json").is_file()
    assert (target / "example_workflows" / "promptloop.jpg").is_file()
    assert (target / "api_workflows" / "promptloop_api.json").is_file()
    assert (target / "js" / "promptloop.js").is_file()
    assert not list(target.rglob("__pycache__"))
    again = install(comfy, mode="copy")  # our own copy: replaced without force
    assert again == target


def test_install_refuses_foreign_folder_and_non_comfyui(tmp_path):
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    (comfy / "custom_nodes" / PACK_NAME).mkdir(parents=True)
    (comfy / "custom_nodes" / PACK_NAME / "something.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        install(comfy)
    assert install(comfy, force=True).is_symlink()
    with pytest.raises(FileNotFoundError):
        install(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        install(comfy, mode="hardlink")


def test_cli_install(tmp_path):
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    result = CliRunner().invoke(comfy_app, ["install", "--comfyui", str(comfy), "--mode", "copy"])
    assert result.exit_code == 0, result.output
    assert "installed the PromptLoop nodes" in result.output
    assert (comfy / "custom_nodes" / PACK_NAME / "__init__.py").is_file()
    bad = CliRunner().invoke(comfy_app, ["install", "--comfyui", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1


def _api():
    return json.loads(API_WORKFLOW.read_text())


def test_api_workflow_uses_known_nodes_and_valid_inputs():
    api = _api()
    kinds = {spec["class_type"] for spec in api.values()}
    assert {"PromptLoopLoadPolicy", "PromptLoopSampler", "PromptLoopTrace"} <= kinds
    assert kinds <= set(NODE_CLASS_MAPPINGS) | set(CORE_NODES)
    for key, spec in api.items():
        for value in spec["inputs"].values():
            if isinstance(value, list):  # a link: [node id, output slot]
                assert value[0] in api and isinstance(value[1], int)
        cls = NODE_CLASS_MAPPINGS.get(spec["class_type"])
        if cls is None:
            continue
        types = cls.INPUT_TYPES()
        declared = {**types["required"], **types.get("optional", {})}
        assert set(spec["inputs"]) <= set(declared), key
        assert set(types["required"]) <= set(spec["inputs"]), key
        for name, value in spec["inputs"].items():
            kind = declared[name][0]
            if isinstance(kind, list):
                assert value in kind or name in ("sampler_name", "scheduler"), (name, value)


def test_ui_workflow_is_the_same_graph():
    ui = json.loads((TEMPLATES / "promptloop.json").read_text())
    assert ui == api_to_ui(_api()), "regenerate with: python tests/comfy/workflow_ui.py"
    assert {n["type"] for n in ui["nodes"]} == {s["class_type"] for s in _api().values()}


def test_templates_are_ui_format_with_a_thumbnail():
    """ComfyUI lists every JSON file of these folders under Templates -> Custom Nodes, opens it as a
    UI-format graph (an API-format file fails: "Required at 'version'") and shows <name>.jpg."""
    found = [f for folder in TEMPLATE_FOLDERS for f in sorted((PACK_DIR / folder).glob("*.json"))]
    assert found and {f.parent.name for f in found} == {"example_workflows"}
    for template in found:
        graph = json.loads(template.read_text())
        assert "version" in graph and isinstance(graph["nodes"], list) and "links" in graph, template.name
        thumbnail = template.with_suffix(".jpg")
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and 200 <= image.width <= 800 and image.height >= 150, thumbnail.name
        assert thumbnail.stat().st_size < 100_000


def test_trace_text_extension_is_served():
    """The Trace node's text box: a front-end extension in the pack's WEB_DIRECTORY."""
    assert pack.WEB_DIRECTORY == "./js"
    script = (PACK_DIR / "js" / "promptloop.js").read_text()
    assert '"PromptLoopTrace"' in script and "onExecuted" in script and "serialize = false" in script
