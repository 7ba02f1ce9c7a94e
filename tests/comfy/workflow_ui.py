"""Turn an API-format ComfyUI workflow into the UI (litegraph) format the editor loads.

Used to generate ``comfy_nodes/example_workflows/promptloop.json`` (the template ComfyUI lists
under Templates -> Custom Nodes) from ``comfy_nodes/api_workflows/promptloop_api.json`` and, in
the tests, to check the two stay the same graph. Inputs of type INT / FLOAT / STRING / BOOLEAN /
a list of choices are widgets (their values go to ``widgets_values``, in ``INPUT_TYPES`` order,
with the extra "control after generate" value after a seed); the others are links.

Layout: one column per depth of the graph (sources on the left), nodes stacked in a column, each
node as large as the editor will make it (:func:`node_size` follows litegraph's
``LGraphNode.computeSize``: slot rows, widget rows, a taller box for multiline text and room for
the images an output node shows), so that no node covers another once the editor has sized them.
The real-ComfyUI browser test checks that in Chromium.

    python tests/comfy/workflow_ui.py   # rewrites example_workflows/promptloop.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "comfy_nodes"
# ComfyUI serves every JSON file in a pack's example_workflows/ (or examples/, workflows/ ...) as a
# template, which must be UI format; the API-format file lives elsewhere.
TEMPLATES = PACK / "example_workflows"
API_WORKFLOWS = PACK / "api_workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# The core nodes the example uses: (inputs in INPUT_TYPES order as (name, type), outputs).
CORE_NODES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "CheckpointLoaderSimple": ([("ckpt_name", "COMBO")], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("text", "STRING"), ("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([("width", "INT"), ("height", "INT"), ("batch_size", "INT")], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE"), ("filename_prefix", "STRING")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "SaveLatent": ([("samples", "LATENT"), ("filename_prefix", "STRING")], []),
    "KSampler": ([("model", "MODEL"), ("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"),
                  ("sampler_name", "COMBO"), ("scheduler", "COMBO"), ("positive", "CONDITIONING"),
                  ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("denoise", "FLOAT")],
                 [("LATENT", "LATENT")]),
}


def _pack_signature(class_type: str):
    sys.path.insert(0, str(ROOT))
    from comfy_nodes.nodes import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[class_type]
    spec = cls.INPUT_TYPES()
    inputs, seeds = [], set()
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0] if isinstance(value[0], str) else "COMBO"
            inputs.append((name, kind))
            if len(value) > 1 and value[1].get("control_after_generate"):
                seeds.add(name)
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return inputs, list(zip(names, cls.RETURN_TYPES)), seeds


# litegraph's sizes (LiteGraphGlobal: NODE_TITLE_HEIGHT, NODE_SLOT_HEIGHT, NODE_WIDGET_HEIGHT)
TITLE_H, SLOT_H, WIDGET_H = 30, 20, 20
MULTILINE_H = 110  # a multiline STRING (a textarea the editor lets grow)
IMAGE_H = 220  # room for the images an output node shows after a run
GAP_X, GAP_Y = 30, 40
IMAGE_NODES = {"SaveImage", "PreviewImage", "PromptLoopTrace"}
# Widgets a node gains in the page that are not inputs (comfy_nodes/js/promptloop.js): the
# PromptLoop Trace node's read-only text box.
PAGE_WIDGETS = {"PromptLoopTrace": ["trace_text"]}

# The view the example opens with, and what it must fit: a 1280 x 720 page (ComfyUI's top bar
# 40 px, side bar 40 px, workflow tabs over the canvas's top-left 37 px) at a zoom above 0.6,
# under which ComfyUI stops drawing text (LiteGraph.Canvas.LowQualityRenderingZoomThreshold);
# nothing under the minimap (250 x 200 at the bottom right, 66 px up) or the zoom controls.
VIEW_SCALE = 0.75
VIEW_MARGIN = (12, 46)  # screen pixels from the canvas's top-left to the graph (under the tabs)


def _multiline(class_type: str) -> set[str]:
    if class_type == "CLIPTextEncode":
        return {"text"}
    if class_type in CORE_NODES:
        return set()
    sys.path.insert(0, str(ROOT))
    from comfy_nodes.nodes import NODE_CLASS_MAPPINGS

    spec = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    return {name for section in ("required", "optional") for name, value in spec.get(section, {}).items()
            if len(value) > 1 and value[1].get("multiline")} | set(PAGE_WIDGETS.get(class_type, []))


def node_size(node: dict) -> list[int]:
    """At least the size litegraph's ``computeSize`` gives the node once its widgets exist."""
    rows = max(len(node["inputs"]), len(node["outputs"]), 1)
    multiline = _multiline(node["type"])
    widgets = list(node["_widget_names"]) + PAGE_WIDGETS.get(node["type"], [])
    height = rows * SLOT_H + 8 + 6
    for name in widgets:
        height += (MULTILINE_H if name in multiline else WIDGET_H) + 4
    if node["type"] in IMAGE_NODES:
        height += IMAGE_H
    width = 400 if multiline else 300
    return [width, height + 10]


def _depth_columns(nodes: dict[int, dict], links: list[list]) -> list[list[int]]:
    """Columns by depth (longest path from a source); a node whose outputs go nowhere (Save Image,
    the trace viewer) goes under its deepest input rather than into a column of its own."""
    parents: dict[int, set[int]] = {i: set() for i in nodes}
    for _, src, _, dst, _, _ in links:
        parents[dst].add(src)
    sources = {src for _, src, _, _, _, _ in links}
    depth: dict[int, int] = {}

    def level(i: int) -> int:
        if i not in depth:
            depth[i] = 1 + max((level(p) for p in parents[i]), default=-1)
        return depth[i]

    columns: dict[int, list[int]] = {}
    for i in sorted(nodes):
        column = level(i) - 1 if i not in sources and parents[i] else level(i)
        columns.setdefault(column, []).append(i)
    return [columns[c] for c in sorted(columns)]


def example_columns(nodes: dict[int, dict]) -> list[list[int]] | None:
    """The example's columns, laid out for a 1280-px page: loaders | negative prompt, trace |
    sampler | decode, save (short, so that the minimap at the bottom right covers nothing)."""
    by_type: dict[str, list[int]] = {}
    for i in sorted(nodes):
        by_type.setdefault(nodes[i]["type"], []).append(i)
    wanted = [["CheckpointLoaderSimple", "EmptyLatentImage", "PromptLoopLoadPolicy"],
              ["CLIPTextEncode", "PromptLoopTrace"], ["PromptLoopSampler"], ["VAEDecode", "SaveImage"]]
    if sorted(t for column in wanted for t in column) != sorted(nodes[i]["type"] for i in nodes):
        return None
    return [[by_type[t][0] for t in column] for column in wanted]


def layout(nodes: dict[int, dict], links: list[list]) -> None:
    """Columns left to right, nodes stacked top to bottom in each, no overlaps."""
    x = 0
    for column in example_columns(nodes) or _depth_columns(nodes, links):
        y = TITLE_H
        width = 0
        for i in column:
            node = nodes[i]
            node["size"] = node_size(node)
            node["pos"] = [x, y]
            y += node["size"][1] + TITLE_H + GAP_Y
            width = max(width, node["size"][0])
        x += width + GAP_X


def signature(class_type: str):
    if class_type in CORE_NODES:
        inputs, outputs = CORE_NODES[class_type]
        return inputs, outputs, {"seed"} if class_type == "KSampler" else set()
    return _pack_signature(class_type)


def api_to_ui(api: dict) -> dict:
    ids = {key: int(key) for key in api}
    links: list[list] = []
    nodes: dict[int, dict] = {}
    order = sorted(api, key=int)
    for index, key in enumerate(order):
        spec = api[key]
        inputs, outputs, seeds = signature(spec["class_type"])
        node = {
            "id": ids[key],
            "type": spec["class_type"],
            "pos": [0, 0],
            "size": [0, 0],
            "flags": {},
            "order": index,
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": s} for s, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": spec["class_type"]},
            "widgets_values": [],
            "_widget_names": [],
        }
        if "_meta" in spec and "title" in spec["_meta"]:
            node["title"] = spec["_meta"]["title"]
        for name, kind in inputs:
            if name not in spec["inputs"]:
                continue
            value = spec["inputs"][name]
            if kind in WIDGET_TYPES and not isinstance(value, list):
                node["widgets_values"].append(value)
                node["_widget_names"].append(name)
                if name in seeds:
                    node["widgets_values"].append("fixed")
                    node["_widget_names"].append("control_after_generate")
            else:
                node["inputs"].append({"name": name, "type": kind, "link": None})
        nodes[ids[key]] = node
    for key in order:
        spec = api[key]
        for slot_in in nodes[ids[key]]["inputs"]:
            src_key, src_slot = spec["inputs"][slot_in["name"]]
            link_id = len(links) + 1
            slot_type = nodes[ids[src_key]]["outputs"][src_slot]["type"]
            links.append([link_id, ids[src_key], src_slot, ids[key], nodes[ids[key]]["inputs"].index(slot_in), slot_type])
            slot_in["link"] = link_id
            nodes[ids[src_key]]["outputs"][src_slot]["links"].append(link_id)
    layout(nodes, links)
    for node in nodes.values():
        del node["_widget_names"]
    return {
        "last_node_id": max(nodes),
        "last_link_id": len(links),
        "nodes": [nodes[i] for i in sorted(nodes)],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": VIEW_SCALE, "offset": [VIEW_MARGIN[0] / VIEW_SCALE, VIEW_MARGIN[1] / VIEW_SCALE]}},
        "version": 0.4,
    }


def main() -> None:
    api = json.loads((API_WORKFLOWS / "promptloop_api.json").read_text())
    out = TEMPLATES / "promptloop.json"
    out.write_text(json.dumps(api_to_ui(api), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
