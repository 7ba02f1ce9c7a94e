"""The documented ComfyUI install (one line, the same everywhere) declares what the nodes import.

The Remote Policy node once failed on the documented ``pip install "promptloop[vision]"``: its
client imports ``httpx``, which only the ``server``/``dev`` extras declared (and a dev install has
everything, so no test saw it). Here the requirement is read from where users read it (README,
docs/comfyui.md, the registry's requirements.txt and pyproject), its dependencies from
``pyproject.toml``, and the imports from the code as it runs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from promptloop.comfy_nodes.install import library_requirement

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "comfy_nodes"
HERE = Path(__file__).resolve().parent
# Modules that ComfyUI itself provides to custom nodes (not installable, not ours to declare).
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "latent_preview",
                   "node_helpers", "nodes", "server"}
INSTALL = re.compile(r'pip install\s+"?(promptloop(?:\[[\w,\s-]*\])?)"?')


def _section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end > 0 else None]


def documented_requirements() -> dict[str, set[str]]:
    """Every place that tells a user what to install into ComfyUI's Python."""
    registry = tomllib.loads((PACK / "pyproject.toml").read_text())["project"]["dependencies"]
    return {
        "README.md": set(INSTALL.findall(_section(ROOT / "README.md", "## 2. In ComfyUI"))),
        "docs/comfyui.md": set(INSTALL.findall(_section(ROOT / "docs" / "comfyui.md", "## Install"))),
        "comfy_nodes/requirements.txt": {library_requirement()},
        "comfy_nodes/pyproject.toml": {r for r in registry if canonicalize_name(Requirement(r).name) == "promptloop"},
    }


def declared(requirement: str) -> set[str]:
    """The distributions ``requirement`` (``promptloop[extras]``) installs directly, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    todo, seen = [Requirement(requirement)], set()
    while todo:
        req = todo.pop()
        specs = list(project["dependencies"]) + [d for e in sorted(req.extras) for d in project["optional-dependencies"][e]]
        for spec in specs:
            dep = Requirement(spec)
            name = canonicalize_name(dep.name)
            if name == canonicalize_name(project["name"]):  # promptloop[...] inside an extra
                if str(dep) not in seen:
                    seen.add(str(dep))
                    todo.append(dep)
            else:
                names.add(name)
    return names


def pack_source_imports() -> dict[str, str]:
    """Top-level modules imported anywhere in the pack's own files (inside functions too)."""
    found: dict[str, str] = {}
    for path in sorted(PACK.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], f"comfy_nodes/{path.name}")
    return found


def third_party(imports: dict[str, str]) -> dict[str, str]:
    return {m: who for m, who in imports.items()
            if m not in sys.stdlib_module_names and m not in COMFYUI_MODULES and m not in ("promptloop", "__future__")
            and not m.startswith("_")}


def uncovered(imports: dict[str, str], names: set[str]) -> dict[str, str]:
    """Modules of ``imports`` that no distribution in ``names`` provides: ``{module: why}``."""
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module, importer in third_party(imports).items():
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if canonicalize_name(module) in names or dists & names:
            continue
        missing[module] = f"imported by {importer}, provided by {sorted(dists) or 'nothing installed'}"
    return missing


def test_install_line_is_the_same_everywhere():
    places = documented_requirements()
    assert all(places.values()), {k: v for k, v in places.items() if not v}
    lines = set().union(*places.values())
    assert len(lines) == 1, places
    assert Requirement(lines.pop()).extras, "the ComfyUI install needs the vision extra (Qwen2-VL processors)"


@pytest.fixture(scope="module")
def tiny_adapter_dir(tiny_policy_dir, tmp_path_factory):
    """An untrained peft LoRA adapter for the tiny policy (the loader node takes one)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_policy_dir)
    out = tmp_path_factory.mktemp("tiny-lora")
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def runtime_imports(tiny_policy_dir, tiny_adapter_dir, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("imports") / "imports.json"
    done = subprocess.run(
        [sys.executable, str(HERE / "node_imports.py"), str(tiny_policy_dir), str(tiny_adapter_dir), str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # a fresh interpreter imports torch and transformers and loads the tiny policy
def test_documented_install_declares_every_module_the_nodes_import(runtime_imports):
    (requirement,) = documented_requirements()["comfy_nodes/requirements.txt"]
    names = declared(requirement)
    # the run did reach the code paths in question (the local and the remote policy clients)
    assert {"transformers", "peft", "httpx", "PIL", "torch"} <= set(runtime_imports), runtime_imports
    missing = uncovered({**pack_source_imports(), **runtime_imports}, names)
    assert not missing, f"{requirement} does not declare: {missing}"


@pytest.mark.slow
def test_the_check_sees_an_undeclared_module(runtime_imports):
    """What the test above would say if httpx were declared only by the server extra (as it was)."""
    names = declared("promptloop[vision]") - {"httpx"}
    assert "httpx" in uncovered(runtime_imports, names)
    assert "httpx" not in uncovered(runtime_imports, declared("promptloop[vision]") | {"httpx"})
