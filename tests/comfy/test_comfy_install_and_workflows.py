"""``promptloop comfy install`` and the example workflows (API and UI format)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from workflow_ui import CORE_NODES, api_to_ui

import promptloop.comfy_nodes as pack
from promptloop.comfy_nodes import NODE_CLASS_MAPPINGS
from promptloop.comfy_nodes.install import PACK_NAME, comfy_app, install

PACK_DIR = Path(pack.__file__).resolve().parent
WORKFLOWS = PACK_DIR / "workflows"


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
    assert (target / "workflows" / "promptloop_api.json").is_file()
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
    return json.loads((WORKFLOWS / "promptloop_api.json").read_text())


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
    ui = json.loads((WORKFLOWS / "promptloop_ui.json").read_text())
    assert ui == api_to_ui(_api()), "regenerate with: python tests/comfy/workflow_ui.py"
    assert {n["type"] for n in ui["nodes"]} == {s["class_type"] for s in _api().values()}
