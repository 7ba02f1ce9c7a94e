"""Run every PromptLoop node that can run without ComfyUI and record what the code imports.

    python node_imports.py POLICY_DIR ADAPTER_DIR OUT.json

Writes ``{top-level module: first importer}`` for each ``import`` statement executed by the
``promptloop`` library or the node pack (not by the libraries they import: those bring their own
dependencies). Run in a fresh interpreter so that module-level imports are seen too. Used by
``test_comfy_dependencies.py`` to check the documented ComfyUI install declares them.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sys
from pathlib import Path

OURS = ("promptloop", "comfy_nodes")
imported: dict[str, str] = {}
_import = builtins.__import__


def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and importer.split(".")[0] in OURS:
        imported.setdefault(name.partition(".")[0], importer)
    return _import(name, globals, locals, fromlist, level)


def exercise(policy_dir: str, adapter_dir: str) -> None:
    from PIL import Image

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from comfy_fakes import FakeBackend, FakeCLIP

    builtins.__import__ = _recording_import
    try:
        import promptloop.comfy_nodes as pack
        from promptloop import RefineLoop
        from promptloop.comfy_nodes.comfy_backend import PromptEncoder
        from promptloop.comfy_nodes.nodes import images_to_pil
        from promptloop.comfy_nodes.segments import run_segmented
        from promptloop.refinement import Observation

        nodes = {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
        for cls in pack.NODE_CLASS_MAPPINGS.values():
            cls.INPUT_TYPES()
        preview = Image.new("RGB", (56, 56), (120, 30, 30))
        observation = [Observation("a red fox", "a red fox", 2, 6, preview=preview)]

        (local,) = nodes["PromptLoopLoadPolicy"].load(policy_dir, "transformers", adapter_dir, "cpu", "auto", 8, 0.0)
        local.refine(observation)
        for protocol in ("promptloop", "openai"):  # nothing listens on port 9
            (remote,) = nodes["PromptLoopRemotePolicy"].connect("http://127.0.0.1:9", protocol, "", 2.0)
            # the sidecar client falls back, the OpenAI one raises (the loop turns that into a
            # fallback); only the imports matter here
            with contextlib.suppress(Exception):
                remote.refine(observation)
        (scripted,) = nodes["PromptLoopScriptedPolicy"].build("{current}, detailed")

        # The sampler node's library half (ComfyUI's sampler and CLIP are stood in for).
        loop = RefineLoop(scripted, "1,3", mode="sync", timeout_s=30.0)
        trace, _ = run_segmented(loop, ["a red fox"], 6, FakeBackend(6), PromptEncoder(FakeCLIP()))
        nodes["PromptLoopTrace"].show(trace, thumb_size=32, save=False, images=None)
        images_to_pil(None)
    finally:
        builtins.__import__ = _import


def main() -> None:
    policy_dir, adapter_dir, out = sys.argv[1:4]
    exercise(policy_dir, adapter_dir)
    Path(out).write_text(json.dumps(imported, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
