"""A hand-written one-shot rewrite: the strongest baseline a policy must beat without previews.

:func:`explicit_rewrite` turns any prompt of the grammar into the explicit ``full`` phrasing the
descriptive backbones (C, D) were trained on, with no model and no image: stated sizes and cells
are kept, a missing size becomes ``large``, missing cells are filled with the first assignment (in
a fixed order that spreads the shapes out) that satisfies every stated cell and relation. The
result always satisfies the user's prompt exactly (tested). :func:`scripted_policy` wraps it as a
:class:`~promptloop.policies.base.StaticPolicy` for the loop.
"""

from __future__ import annotations

import itertools

from promptloop.worlds.shapes.grammar import Spec, explicit_caption, parse_prompt
from promptloop.worlds.shapes.scene import Shape

#: Cells tried for shapes whose cell the prompt leaves open: centre and corners first (far apart).
_CELL_ORDER: tuple[tuple[int, int], ...] = ((1, 1), (0, 0), (2, 2), (0, 2), (2, 0), (1, 0), (1, 2), (0, 1), (2, 1))
DEFAULT_SIZE = "large"


def _holds(a: tuple[int, int], rel: str, b: tuple[int, int]) -> bool:
    (ra, ca), (rb, cb) = a, b
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[rel]


def explicit_shapes(spec: Spec) -> list[Shape]:
    """Shapes satisfying ``spec``, in its mention order: stated attributes kept, open ones filled."""
    open_slots = [i for i, m in enumerate(spec.mentions) if m.cell is None]
    fixed = {i: m.cell for i, m in enumerate(spec.mentions) if m.cell is not None}
    free = [c for c in _CELL_ORDER if c not in fixed.values()]
    for chosen in itertools.permutations(free, len(open_slots)):
        cells = fixed | dict(zip(open_slots, chosen))
        if all(_holds(cells[a], rel, cells[b]) for a, rel, b in spec.relations):
            break
    else:  # contradictory relations: keep the first spread-out assignment
        cells = fixed | dict(zip(open_slots, free))
    return [Shape(m.color, m.kind, m.size or DEFAULT_SIZE, cells[i]) for i, m in enumerate(spec.mentions)]


def explicit_rewrite(prompt: str) -> str:
    """``prompt`` in the explicit ``full`` phrasing, shapes in the user's order (ParseError if the
    prompt is not of the grammar)."""
    return explicit_caption(explicit_shapes(parse_prompt(prompt)))


def scripted_policy():
    """:func:`explicit_rewrite` as a policy (falls back to the current prompt outside the grammar)."""
    from promptloop.policies.base import StaticPolicy
    from promptloop.worlds.shapes.grammar import ParseError

    def rewrite(obs) -> str:
        try:
            return explicit_rewrite(obs.original_prompt)
        except ParseError:
            return obs.current_prompt

    return StaticPolicy(rewrite, name="shapes-explicit-rewrite")


__all__ = ["DEFAULT_SIZE", "explicit_rewrite", "explicit_shapes", "scripted_policy"]
