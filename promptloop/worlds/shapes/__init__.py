"""ShapesWorld: coloured shapes, a caption grammar, an exact reward, and a backbone trained here.

What the CLI, ``promptloop eval`` and the training scripts ask about it (prompt sets, rewards,
shipped assets) is :data:`promptloop.worlds.shapes.world.WORLD` (``get_world("shapes")``).
"""

from promptloop.worlds.shapes.grammar import (
    STYLES,
    ParseError,
    Spec,
    all_captions,
    caption,
    is_valid_prompt,
    parse_prompt,
)
from promptloop.worlds.shapes.render import render_scene
from promptloop.worlds.shapes.reward import ATTRIBUTES, fidelity, score_image, shapes_scores
from promptloop.worlds.shapes.scene import Scene, Shape, sample_scene

__all__ = [
    "ATTRIBUTES", "STYLES", "ParseError", "Scene", "Shape", "Spec", "all_captions", "caption", "fidelity",
    "is_valid_prompt", "parse_prompt", "render_scene", "sample_scene", "score_image", "shapes_scores",
]
