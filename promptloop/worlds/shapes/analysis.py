"""Find the shapes in an image by plain image analysis (no learned model).

Each pixel takes the nearest named colour (or the background) when it lies within
``color_threshold`` of it in RGB; pixels of one colour form 8-connected components; components
smaller than ``min_area`` are noise. A component's kind comes from its geometry (how much of its
mass lies in the upper half of its box: a quarter for an apex-up triangle, a half otherwise; how
much of its box it fills: π/4 for a circle, 1 for a square), its size from its area, its cell from
its box centre. Images of another size are resized to 64×64 first.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from promptloop.worlds.shapes.render import IMAGE_SIZE, ideal_area
from promptloop.worlds.shapes.scene import BACKGROUND, COLORS

_NAMES = list(COLORS)
# Each named colour and its half-blend with the background (anti-aliased and blurred edges) name
# the colour; quarter-blends and the background itself name nothing. A pixel takes the name of its
# nearest entry.
_FULL = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)
_BG = np.array(BACKGROUND, dtype=np.float32)
_PALETTE = np.concatenate([_FULL, 0.5 * _FULL + 0.5 * _BG, 0.25 * _FULL + 0.75 * _BG, _BG[None]])


@dataclass(frozen=True)
class Detection:
    """One shape found in an image (64×64 pixel coordinates)."""

    color: str
    kind: str
    size: str
    cell: tuple[int, int]
    area: int
    center: tuple[float, float]  # box centre (x, y)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive
    fidelity: float  # IoU of the component with the ideal shape drawn in its box


@dataclass(frozen=True)
class Analysis:
    detections: tuple[Detection, ...]
    foreground: int  # pixels of any named colour
    explained: int  # of which in accepted components


def _label_colors(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """Per pixel: the index of the nearest named colour, or -1 (background / nothing near)."""
    dist = np.linalg.norm(rgb[:, :, None, :] - _PALETTE[None, None], axis=-1)
    nearest = dist.argmin(-1)
    ok = (nearest < 2 * len(_NAMES)) & (dist.min(-1) < threshold)
    return np.where(ok, nearest % len(_NAMES), -1)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, as arrays of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        out.append(np.array(pixels))
    return out


def _ideal_mask(kind: str, w: int, h: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs + 0.5) / w * 2 - 1  # -1..1 across the box
    v = (ys + 0.5) / h * 2 - 1
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return np.ones((h, w), dtype=bool)
    return np.abs(u) <= (v + 1) / 2  # apex-up triangle


def classify_kind(pixels: np.ndarray, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    fill = len(pixels) / (w * h)
    mid = (y0 + y1) / 2
    upper = float(np.mean(pixels[:, 0] < mid)) + 0.5 * float(np.mean(pixels[:, 0] == mid))
    if upper < 0.38:
        return "triangle"
    return "square" if fill > 0.88 else "circle"


def analyse(image: Image.Image, *, color_threshold: float = 90.0, min_area: int = 14) -> Analysis:
    """The shapes found in ``image``."""
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    labels = _label_colors(np.asarray(image, dtype=np.float32), color_threshold)
    detections, explained = [], 0
    for index, name in enumerate(_NAMES):
        for pixels in _components(labels == index):
            ys, xs = pixels[:, 0], pixels[:, 1]
            if len(pixels) < min_area or xs.max() - xs.min() < 2 or ys.max() - ys.min() < 2:
                continue
            explained += len(pixels)
            box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
            kind = classify_kind(pixels, box)
            w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
            ideal = _ideal_mask(kind, w, h)
            mask = np.zeros((h, w), dtype=bool)
            mask[ys - box[1], xs - box[0]] = True
            fidelity = float((mask & ideal).sum() / max(1, (mask | ideal).sum()))
            split = math.sqrt(ideal_area(kind, "small") * ideal_area(kind, "large"))
            size = "large" if len(pixels) > split else "small"
            cx, cy = (box[0] + box[2] + 1) / 2, (box[1] + box[3] + 1) / 2
            cell = (min(2, int(cy * 3 // IMAGE_SIZE)), min(2, int(cx * 3 // IMAGE_SIZE)))
            detections.append(Detection(name, kind, size, cell, len(pixels), (cx, cy), box, fidelity))
    detections.sort(key=lambda d: (d.cell, -d.area))
    return Analysis(tuple(detections), int((labels >= 0).sum()), explained)
