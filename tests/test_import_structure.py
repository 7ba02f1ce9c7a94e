"""The package's import structure: no import circle, and the library imports no surface.

Every module of the distribution (``promptloop.*``, with ``server/``, ``training/`` and
``comfy_nodes/`` mapped to ``promptloop.server`` etc. by ``[tool.setuptools.package-dir]``) must
import on its own, and the module-level imports inside the package form no cycle. The library (all
of ``promptloop/`` but the ``cli``) never imports a surface built on it: the sidecar, the ComfyUI
nodes or the trainers (docs/architecture.md).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: where each top-level folder installs (pyproject.toml, [tool.setuptools.package-dir])
FOLDERS = {
    "promptloop": ROOT / "promptloop",
    "promptloop.server": ROOT / "server",
    "promptloop.training": ROOT / "training",
    "promptloop.comfy_nodes": ROOT / "comfy_nodes",
}
SURFACES = ("promptloop.server", "promptloop.training", "promptloop.comfy_nodes")
#: in promptloop/ but a surface: the command line registers the sidecar, trainer and ComfyUI commands
LIBRARY_EXEMPT = ("promptloop.cli", "promptloop.__main__")


def _inside(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _modules() -> dict[str, Path]:
    """Every module of the distribution by its import name (``__main__`` modules left out)."""
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(not p.isidentifier() for p in parts) or rel.name == "__main__":
                continue
            name = ".".join([package, *parts])
            if package == "promptloop" and _inside(name, SURFACES):
                continue
            # A folder without __init__.py is no package of the distribution (e.g. assets).
            if all((folder.joinpath(*rel.parts[:i]) / "__init__.py").exists() for i in range(len(rel.parts))):
                out[name] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, *, module_level: bool) -> list[tuple[str, int]]:
    """(imported module of the package, line) for each import in ``path``.

    ``module_level``: only the imports that run when the module is imported (not those inside
    functions, nor under ``if TYPE_CHECKING:``); otherwise every import statement and every
    ``importlib.import_module("...")`` with a literal name.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def resolve(module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = package.split(".")
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def add(target: str, line: int) -> None:
        # `from a.b import c`: the module a.b.c when there is one, else the package a.b
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.append((target, line))

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if module_level and isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level)
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno)
        elif (not module_level and isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            add(node.args[0].value, node.lineno)
        visit(node)

    visit(tree)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:  # a shortest way back to the start, inside the component
        members, start = set(component), component[0]
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in {w for v in frontier for w in graph[v]}:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        cycles.append([*paths[last], start])
    return cycles


def test_every_folder_of_the_distribution_is_found():
    assert {"promptloop.hook", "promptloop.server.app", "promptloop.training.cli",
            "promptloop.comfy_nodes.nodes", "promptloop.rewards.registry"} <= set(MODULES)
    assert len(MODULES) > 60


def test_module_level_imports_form_no_cycle():
    graph = {name: {t for t, _ in _imports(name, path, module_level=True)} for name, path in MODULES.items()}
    cycles = _cycles(graph)
    assert not cycles, "import circles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


LIBRARY = sorted(n for n in MODULES if not _inside(n, SURFACES) and not _inside(n, LIBRARY_EXEMPT))

_IMPORT_ALL = textwrap.dedent(f"""
    import importlib, json, sys, traceback
    library, everything = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for name in library:
        importlib.import_module(name)
    surfaces = sorted(m for m in sys.modules if m.startswith({SURFACES!r}))
    failed = {{}}
    for name in everything:
        for loaded in [m for m in sys.modules if m == "promptloop" or m.startswith("promptloop.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except BaseException:
            failed[name] = traceback.format_exc(limit=-3)
    print(json.dumps({{"surfaces": surfaces, "failed": failed}}))
""")


@pytest.fixture(scope="module")
def imported() -> dict:
    """One fresh process: imports the library (then lists the surface modules loaded), then each
    module of the distribution first with every ``promptloop`` module dropped (torch, diffusers, ...
    stay loaded, so this is cheap) and records those that fail."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(["promptloop", *LIBRARY]), json.dumps(sorted(MODULES))],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_imports_on_its_own(imported):
    """A circle that only bites from some entry point fails here (as an ImportError or a
    partially initialised module)."""
    failed = imported["failed"]
    assert not failed, "modules that do not import on their own:\n" + "\n".join(
        f"{name}:\n{tb}" for name, tb in failed.items())


def test_the_library_imports_no_surface_statically():
    """Every import statement in the library, module-level or inside a function."""
    bad = [f"{name} (line {line}) imports {target}"
           for name in LIBRARY for target, line in _imports(name, MODULES[name], module_level=False)
           if _inside(target, SURFACES)]
    assert not bad, "the library imports a surface:\n" + "\n".join(bad)


def test_importing_the_library_loads_no_surface(imported):
    assert not imported["surfaces"], f"importing the library loaded surface modules: {imported['surfaces']}"


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set()}, None),
])
def test_the_cycle_finder_names_the_cycle(graph, cycle):
    assert _cycles(graph) == ([cycle] if cycle else [])
