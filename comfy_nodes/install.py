"""Put the PromptLoop node pack into a ComfyUI installation (``custom_nodes/``).

    promptloop comfy install --comfyui /path/to/ComfyUI            # symlink (follows upgrades)
    promptloop comfy install --comfyui /path/to/ComfyUI --mode copy

or from Python: ``from promptloop.comfy_nodes.install import install``. The pack imports the
``promptloop`` library, so that must be installed into the Python that runs ComfyUI too
(``/path/to/ComfyUI/.venv/bin/python -m pip install "promptloop[vision]"``, the line in
``requirements.txt``); the command checks it.

When ComfyUI-Manager installs the pack from the registry it runs this file as a script in the
pack folder: then it only reports whether ``promptloop`` is importable (the library comes from
``requirements.txt``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

try:  # typer is a dependency of promptloop; keep the pack importable without it
    import typer
except ImportError:  # pragma: no cover - only when run by ComfyUI-Manager in a bare Python
    typer = None  # type: ignore[assignment]

PACK_NAME = "comfyui-promptloop"  # folder name under custom_nodes/ (not importable as `promptloop`)
MODES = ("symlink", "copy")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")


def pack_source() -> Path:
    """The folder holding the node pack (this file's folder)."""
    return Path(__file__).resolve().parent


def library_requirement() -> str:
    """What ComfyUI's Python must install for the nodes: the pack's ``requirements.txt`` line."""
    for line in (pack_source() / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("promptloop"):
            return line
    raise RuntimeError(f"{pack_source() / 'requirements.txt'} names no promptloop requirement")


def _pip_install(python: str | os.PathLike) -> str:
    return f'{python} -m pip install "{library_requirement()}"'


def is_comfyui_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "main.py").is_file() and (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def _is_our_pack(path: Path) -> bool:
    marker = path / "pyproject.toml"
    if not marker.is_file() or not (path / "nodes.py").is_file():
        return False
    text = marker.read_text(errors="replace")
    return 'PublisherId = "promptloop"' in text


def install(comfyui_dir: str | os.PathLike, mode: str = "symlink", **options: Any) -> Path:
    """Install the pack as ``<comfyui_dir>/custom_nodes/<name>``; return that path.

    Checks that ``comfyui_dir`` is a ComfyUI checkout, then :func:`install_into` its
    ``custom_nodes`` with the same ``mode`` and keyword options (``name``, ``force``, ``source``).
    """
    comfy = Path(comfyui_dir).expanduser().resolve()
    if not is_comfyui_dir(comfy):
        raise FileNotFoundError(f"{comfy} does not look like a ComfyUI checkout (no main.py, nodes.py, comfy/)")
    return install_into(comfy / "custom_nodes", mode, **options)


def install_into(
    custom_nodes_dir: str | os.PathLike,
    mode: str = "symlink",
    *,
    name: str = PACK_NAME,
    force: bool = False,
    source: str | os.PathLike | None = None,
) -> Path:
    """Install the pack as ``<custom_nodes_dir>/<name>`` (any ``custom_nodes`` folder, e.g. one under
    ComfyUI's ``--base-directory``); return that path.

    ``mode="symlink"`` links to the installed package (an upgrade of ``promptloop`` updates the
    nodes); ``mode="copy"`` copies the files (for ComfyUI builds that do not follow links, e.g.
    some Windows setups). Re-running is safe: an earlier PromptLoop install at that place is
    replaced. Anything else there is left alone unless ``force=True``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    src = Path(source).resolve() if source else pack_source()
    custom_nodes = Path(custom_nodes_dir).expanduser()
    custom_nodes.mkdir(parents=True, exist_ok=True)
    target = custom_nodes / name

    if target.is_symlink():
        if mode == "symlink" and target.resolve() == src:
            return target  # already installed, nothing to do
        target.unlink()
    elif target.exists():
        if not (force or _is_our_pack(target)):
            raise FileExistsError(f"{target} exists and is not a PromptLoop pack; pass force=True to replace it")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    if mode == "symlink":
        target.symlink_to(src, target_is_directory=True)
    else:
        shutil.copytree(src, target, ignore=_IGNORE)
    return target


def find_comfyui_python(comfyui_dir: str | os.PathLike) -> Path | None:
    """The Python that runs this ComfyUI, if it has one of the usual layouts."""
    comfy = Path(comfyui_dir).expanduser()
    candidates = [
        comfy / ".venv" / "bin" / "python",
        comfy / "venv" / "bin" / "python",
        comfy / ".venv" / "Scripts" / "python.exe",
        comfy / "venv" / "Scripts" / "python.exe",
        comfy.parent / "python_embeded" / "python.exe",  # the Windows portable build
    ]
    return next((c for c in candidates if c.exists()), None)


def library_importable(python: str | os.PathLike) -> tuple[bool, str]:
    """Whether ``import promptloop`` works in that Python; with its version or the error."""
    code = "import promptloop, sys; sys.stdout.write(promptloop.__version__)"
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                              check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    if done.returncode == 0:
        return True, done.stdout.strip()
    return False, (done.stderr.strip().splitlines() or ["import failed"])[-1]


if typer is not None:
    comfy_app = typer.Typer(name="comfy", no_args_is_help=True, add_completion=False)

    @comfy_app.callback()  # a group even with one command: `promptloop comfy install`
    def _comfy_group() -> None:
        """The ComfyUI node pack: install it into a ComfyUI checkout."""

    @comfy_app.command("install")
    def install_command(
        comfyui: Annotated[Path, typer.Option(help="The ComfyUI folder (the one holding main.py).")],
        mode: Annotated[str, typer.Option(
            help="symlink (follows upgrades of promptloop) or copy.")] = "symlink",
        name: Annotated[str, typer.Option(help="Folder name under custom_nodes/.")] = PACK_NAME,
        force: Annotated[bool, typer.Option(
            "--force", help="Replace whatever is at custom_nodes/<name>.")] = False,
        python: Annotated[Path | None, typer.Option(
            help="ComfyUI's Python, to check that it can import promptloop (default: found in the ComfyUI "
                 "folder, e.g. .venv/bin/python).")] = None,
    ) -> None:
        """Install the PromptLoop nodes into ComfyUI's custom_nodes/ and check ComfyUI's Python."""
        try:
            target = install(comfyui, mode=mode, name=name, force=force)
        except (FileNotFoundError, FileExistsError, ValueError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        typer.echo(f"installed the PromptLoop nodes: {target} ({mode})")
        python = python or find_comfyui_python(comfyui)
        if python is None:
            typer.echo("could not find ComfyUI's Python; make sure it can `import promptloop` "
                       f"(e.g. {_pip_install('<ComfyUI python>')}), then restart ComfyUI.")
            return
        ok, detail = library_importable(python)
        if ok:
            typer.echo(f"{python} imports promptloop {detail}: restart ComfyUI and look for the 'PromptLoop' category.")
        else:
            typer.secho(f"{python} cannot import promptloop ({detail}). Install it there:\n"
                        f"  {_pip_install(python)}", fg=typer.colors.YELLOW)
else:  # pragma: no cover
    comfy_app = None


def _registry_post_install() -> int:
    """What ComfyUI-Manager runs (``python install.py`` in the pack folder): a check only."""
    ok, detail = library_importable(sys.executable)
    if ok:
        print(f"PromptLoop nodes: promptloop {detail} is importable.")
        return 0
    print(f"PromptLoop nodes: `import promptloop` failed ({detail}); run: {_pip_install(sys.executable)}")
    return 0


if __name__ == "__main__":
    sys.exit(_registry_post_install())
