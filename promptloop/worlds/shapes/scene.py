"""ShapesWorld scenes: a few coloured shapes on a plain background, drawn from a seed.

A :class:`Scene` is a tuple of :class:`Shape` objects, each with a colour, a kind, a size and a
cell of a 3×3 grid (at most one shape per cell). Everything here is plain data: rendering lives
in :mod:`.render`, captions in :mod:`.grammar`, scoring in :mod:`.reward`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Named colours (RGB). Far apart in RGB so that blurred, drifted generations still land nearest
#: the intended name.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 200),
}
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
#: Half extent of a shape in pixels at 64×64, by size.
HALF_EXTENT: dict[str, float] = {"small": 5.5, "large": 9.0}

#: The 3×3 grid cells, row-major; (row, col) with row 0 at the top.
CELLS: tuple[tuple[int, int], ...] = tuple((r, c) for r in range(3) for c in range(3))
#: How the grammar names each cell (its phrase after the noun).
CELL_PHRASES: dict[tuple[int, int], str] = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the centre", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}

#: Probability of 1, 2 and 3 objects in a scene: more small scenes, which a small model learns first.
COUNT_WEIGHTS: tuple[float, float, float] = (0.45, 0.38, 0.17)


@dataclass(frozen=True, order=True)
class Shape:
    """One object of a scene."""

    color: str
    kind: str
    size: str
    cell: tuple[int, int]

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown shape {self.kind!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not on the 3×3 grid")


@dataclass(frozen=True)
class Scene:
    """A few shapes in distinct cells, ordered by cell (reading order)."""

    shapes: tuple[Shape, ...]
    seed: int | None = None

    def __post_init__(self) -> None:
        cells = [s.cell for s in self.shapes]
        if len(set(cells)) != len(cells):
            raise ValueError("two shapes share a cell")
        object.__setattr__(self, "shapes", tuple(sorted(self.shapes, key=lambda s: s.cell)))

    def __len__(self) -> int:
        return len(self.shapes)


def sample_scene(seed: int, *, max_objects: int = 3, count_weights: tuple[float, ...] = COUNT_WEIGHTS) -> Scene:
    """The scene of ``seed`` (deterministic): 1..max_objects shapes, distinct cells."""
    rng = random.Random(seed)
    weights = list(count_weights)[:max_objects]
    n = rng.choices(range(1, len(weights) + 1), weights=weights)[0]
    cells = rng.sample(CELLS, n)
    shapes = tuple(Shape(rng.choice(list(COLORS)), rng.choice(KINDS), rng.choice(SIZES), cell) for cell in cells)
    return Scene(shapes, seed=seed)


def relation(a: Shape, b: Shape) -> str | None:
    """A relation that holds from ``a`` to ``b``: ``"left of"``, ``"right of"``, ``"above"``,
    ``"below"`` (horizontal first when both hold), or None when they share the cell."""
    (ra, ca), (rb, cb) = a.cell, b.cell
    if ca != cb:
        return "left of" if ca < cb else "right of"
    if ra != rb:
        return "above" if ra < rb else "below"
    return None
