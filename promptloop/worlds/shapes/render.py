"""Render a :class:`~.scene.Scene` to a PIL image (anti-aliased, deterministic)."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from promptloop.worlds.shapes.scene import BACKGROUND, COLORS, HALF_EXTENT, Scene, Shape

IMAGE_SIZE = 64
_SUPERSAMPLE = 4


def shape_center(shape: Shape, size: int = IMAGE_SIZE, jitter: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """Pixel centre (x, y) of a shape's cell, plus a jitter in pixels at 64 px."""
    row, col = shape.cell
    scale = size / IMAGE_SIZE
    cell = size / 3
    return (col + 0.5) * cell + jitter[0] * scale, (row + 0.5) * cell + jitter[1] * scale


def shape_polygon(kind: str, cx: float, cy: float, half: float) -> list[tuple[float, float]] | None:
    """The polygon of a square or (apex-up, equilateral-ish) triangle; None for a circle."""
    if kind == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if kind == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, half: float, fill) -> None:
    polygon = shape_polygon(kind, cx, cy, half)
    if polygon is None:
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def render_scene(scene: Scene, size: int = IMAGE_SIZE, *, jitter: bool = True) -> Image.Image:
    """The scene as an RGB image of ``size``×``size``. With ``jitter`` each shape moves by up to
    one pixel (at 64 px) inside its cell, drawn from the scene's seed."""
    rng = random.Random(scene.seed if scene.seed is not None else 0)
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    scale = big / IMAGE_SIZE
    for shape in scene.shapes:
        offset = (rng.uniform(-1, 1), rng.uniform(-1, 1)) if jitter else (0.0, 0.0)
        cx, cy = shape_center(shape, big, offset)
        draw_shape(draw, shape.kind, cx, cy, HALF_EXTENT[shape.size] * scale, COLORS[shape.color])
    return image.resize((size, size), Image.Resampling.BOX)


def ideal_area(kind: str, size: str, image_size: int = IMAGE_SIZE) -> float:
    """Area in pixels of a shape of this kind and size at ``image_size``."""
    half = HALF_EXTENT[size] * image_size / IMAGE_SIZE
    return {"circle": math.pi * half * half, "square": 4 * half * half, "triangle": 2 * half * half}[kind]
