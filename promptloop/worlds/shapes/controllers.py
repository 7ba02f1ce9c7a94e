"""Hand-written ShapesWorld controllers: the best one-shot rewrite, and the same with eyes (issue 22).

* :func:`oneshot_rewrite_for` / :class:`OneShotRule` (``oneshot_rule``): the best one-shot rewrite
  we can write for a backbone. It knows the grammar and what the backbone follows best
  (:data:`BACKBONE_INPUT`: the user's own prompt for A/B, trained on every phrasing; the explicit
  ``full`` phrasing of :func:`~.rewrite.explicit_rewrite` for C, D, E, F), and it never sees an
  image. Run it through the one-shot path (:func:`promptloop.oneshot.oneshot_rewrite`).
* :class:`PreviewRule` (``preview_rule``): the same rewrite before sampling (at step ``-1``, the
  one-shot path), plus, at each refinement step of the loop, it reads the preview with the world's
  own scene analysis (:func:`~.analysis.analyse`), matches it to the shapes the prompt asks for
  (:func:`~.reward.match`) and, when a shape is missing or drawn with the wrong colour or kind,
  restates the prompt with the shapes it does not see named **first** (optionally with the
  count stated: ``"three shapes: ..."``). With ``rebind=True`` it first tries a *re-binding*: where
  the preview shows the colours of shapes whose place the user left open at each other's cells
  (attribute leakage), it moves those shapes to the cells that already have their colour
  (:func:`rebind_cells`). When the preview already shows every shape it keeps the
  prompt, so it cannot hurt a trajectory that is going right.
* :func:`candidate_rewrites`: the K rewrites the hindsight ceiling chooses among (every shape
  named first in turn, with and without the count, the one-shot rewrite kept).

Both rules are :class:`~promptloop.policies.base.Policy` objects (``refine(observations)``), so they
run through the real loop (:class:`~promptloop.hook.PromptLoopHook`) and the one-shot path.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from promptloop.policies.base import StaticPolicy
from promptloop.refinement import Observation
from promptloop.worlds.shapes.analysis import Analysis, analyse
from promptloop.worlds.shapes.grammar import Mention, ParseError, Spec, explicit_caption, parse_prompt
from promptloop.worlds.shapes.reward import match
from promptloop.worlds.shapes.rewrite import DEFAULT_SIZE, explicit_rewrite, explicit_shapes
from promptloop.worlds.shapes.scene import Shape

#: What each shipped backbone follows best (measured: docs/shapesworld.md, docs/experiment.md,
#: docs/seeing.md): ``"user"`` keeps the user's prompt, ``"explicit"`` writes it in ``full``.
BACKBONE_INPUT: dict[str, str] = {
    "backbone-a": "user", "backbone-b": "user", "backbone-c": "explicit", "backbone-d": "explicit",
    "backbone-e": "explicit", "backbone-f": "explicit",
}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def oneshot_rewrite_for(prompt: str, style: str = "explicit") -> str:
    """The one-shot rewrite of ``prompt`` in ``style`` (``"explicit"`` or ``"user"``); prompts
    outside the grammar are kept as they are."""
    if style == "user":
        return prompt
    if style != "explicit":
        raise ValueError(f"unknown rewrite style {style!r}; choose 'explicit' or 'user'")
    try:
        return explicit_rewrite(prompt)
    except ParseError:
        return prompt


def _counted(text: str, n: int) -> str:
    return f"{_NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}: {text}" if n in _NUMBER_WORDS and n > 1 else text


def _shapes_of(spec: Spec) -> list[Shape]:
    """The shapes a prompt asks for, with its open attributes filled as the one-shot rewrite does."""
    return explicit_shapes(spec)


def restate(shapes: Sequence[Shape], first: Sequence[int] = (), *, count: bool = False) -> str:
    """The ``full`` phrasing of ``shapes`` with the indices in ``first`` named first (in that
    order), the others after them in their order; ``count`` prefixes the total."""
    order = list(dict.fromkeys(first)) + [i for i in range(len(shapes)) if i not in first]
    text = explicit_caption([shapes[i] for i in order])
    return _counted(text, len(shapes)) if count else text


def unseen_mentions(spec: Spec, analysis: Analysis) -> list[int]:
    """Indices of the mentions the analysed image does not show: unmatched, or matched to a shape
    of another colour or kind."""
    pairs = match(spec, analysis.detections)
    dets = analysis.detections
    out = []
    for i, m in enumerate(spec.mentions):
        j = pairs.get(i)
        if j is None or dets[j].color != m.color or dets[j].kind != m.kind:
            out.append(i)
    return out


def _unplaced(spec: Spec) -> list[int]:
    """Indices of the mentions whose place the user left open (no cell, in no relation)."""
    related = {i for a, _, b in spec.relations for i in (a, b)}
    return [i for i, m in enumerate(spec.mentions) if m.cell is None and i not in related]


def _moved(shapes: Sequence[Shape], indices: Sequence[int], cells: Sequence[tuple[int, int]]) -> list[Shape]:
    """``shapes`` with shape ``indices[k]`` moved to ``cells[k]``."""
    out = list(shapes)
    for i, cell in zip(indices, cells, strict=True):
        out[i] = replace(shapes[i], cell=cell)
    return out


def rebind_cells(user: Spec, shapes: Sequence[Shape], analysis: Analysis) -> list[Shape] | None:
    """``shapes`` (the explicit rewrite of ``user``) with the cells of the mentions the user left
    unplaced permuted so that most of them sit where the preview shows their colour; None when no
    permutation matches more colours than the current cells (ties keep the current cells)."""
    free = _unplaced(user)
    if len(free) < 2:
        return None
    seen = {d.cell: d.color for d in analysis.detections}
    cells = tuple(shapes[i].cell for i in free)
    # permutations() yields the current order first and max() keeps the first best: ties keep it
    best = max(itertools.permutations(cells),
               key=lambda order: sum(seen.get(c) == shapes[i].color for i, c in zip(free, order)))
    return None if best == cells else _moved(shapes, free, best)


@dataclass
class Correction:
    """What :class:`PreviewRule` saw and wrote at one refinement."""

    seen: int  # shapes found in the preview
    unseen: list[int]  # mention indices not shown
    text: str
    rebound: bool = False  # the unplaced shapes were moved to the cells showing their colours

    @property
    def changed(self) -> bool:
        return bool(self.unseen) or self.rebound


class OneShotRule(StaticPolicy):
    """``oneshot_rule``: :func:`oneshot_rewrite_for` of the *original* prompt, whatever the step (no
    image is looked at). ``style``: ``"explicit"`` or ``"user"`` (see :data:`BACKBONE_INPUT`). A
    :class:`~promptloop.policies.base.StaticPolicy` whose rewrite is :meth:`rewrite`."""

    def __init__(self, style: str = "explicit", *, name: str = "oneshot_rule") -> None:
        oneshot_rewrite_for("a red circle", style)  # validate the style
        self.style = style
        super().__init__(self.rewrite, name=name)

    @classmethod
    def for_backbone(cls, backbone: str) -> OneShotRule:
        return cls(BACKBONE_INPUT.get(backbone, "explicit"))

    def rewrite(self, obs: Observation) -> str:
        return oneshot_rewrite_for(obs.original_prompt, self.style)


class PreviewRule(OneShotRule):
    """``preview_rule``: :class:`OneShotRule` before sampling (step ``-1``, or any observation
    without a preview); at a refinement step with a preview, it names the shapes the preview does
    not show first (and, with ``count=True``, states the total), else keeps the current prompt.

    The target is the explicit rewrite of the original prompt (the original prompt itself when it
    is already explicit, as after the one-shot path), so a correction never changes what is asked
    for, only how it is said. ``log`` keeps one :class:`Correction` per refinement with a preview.
    """

    def __init__(self, style: str = "explicit", *, count: bool = False, rebind: bool = False, min_area: int = 14,
                 color_threshold: float = 90.0, name: str = "preview_rule") -> None:
        super().__init__(style, name=name)
        self.count, self.rebind, self.min_area, self.color_threshold = count, rebind, min_area, color_threshold
        self.log: list[Correction] = []

    def correct(self, prompt: str, preview, user: str | None = None) -> tuple[str | None, Correction | None]:
        """The corrected prompt for ``prompt`` given ``preview`` (None: keep the current prompt);
        ``user``: the user's prompt, whose unplaced shapes a re-binding may move (default ``prompt``)."""
        try:
            shapes = _shapes_of(parse_prompt(prompt))
            spec = parse_prompt(user if user is not None else prompt) if self.rebind else None
        except ParseError:
            return None, None
        analysis = analyse(preview, color_threshold=self.color_threshold, min_area=self.min_area)
        if spec is not None and len(spec.mentions) == len(shapes):
            moved = rebind_cells(spec, shapes, analysis)
            if moved is not None:
                text = explicit_caption(moved)
                return text, Correction(len(analysis.detections), [], text, rebound=True)
        target = Spec(tuple(Mention(s.color, s.kind, s.size if s.size else DEFAULT_SIZE, s.cell) for s in shapes))
        unseen = unseen_mentions(target, analysis)
        if not unseen:
            return None, Correction(len(analysis.detections), [], prompt)
        text = restate(shapes, unseen, count=self.count)
        return text, Correction(len(analysis.detections), unseen, text)

    def rewrite(self, obs: Observation) -> str:
        if obs.preview is None or obs.step < 0:
            return super().rewrite(obs)
        target = oneshot_rewrite_for(obs.original_prompt, "explicit")
        text, note = self.correct(target, obs.preview, obs.original_prompt)
        if note is not None:
            self.log.append(note)
        return obs.current_prompt if text is None else text


def candidate_rewrites(prompt: str, k: int = 6) -> list[str]:
    """``k`` rewrites of ``prompt`` for the hindsight ceiling: the explicit rewrite as it is, then
    each shape named first in turn (with and without the count stated), the user's prompt;
    repeated to length ``k`` when there are fewer."""
    try:
        shapes = _shapes_of(parse_prompt(prompt))
    except ParseError:
        return [prompt] * k
    out = [explicit_caption(shapes)]
    for i in range(len(shapes)):
        out.append(restate(shapes, [i]))
    for i in range(len(shapes)):
        out.append(restate(shapes, [i], count=True))
    out.append(prompt)
    out = list(dict.fromkeys(out))
    while len(out) < k:
        out.append(out[len(out) % max(1, len(out))])
    return out[:k]


def rebind_candidates(user: str, k: int = 4) -> list[str]:
    """``k`` rewrites of the user's prompt for the hindsight ceiling of a leaky backbone: the explicit
    rewrite, then the same shapes with the cells of the unplaced ones permuted (every binding
    :func:`rebind_cells` could choose), then :func:`candidate_rewrites` to fill up to ``k``."""
    try:
        spec = parse_prompt(user)
    except ParseError:
        return [user] * k
    shapes = _shapes_of(spec)
    free = _unplaced(spec)
    out = [explicit_caption(shapes)]
    out += [explicit_caption(_moved(shapes, free, order))
            for order in itertools.permutations([shapes[i].cell for i in free])]
    out = list(dict.fromkeys(out + candidate_rewrites(out[0], k)))
    return (out * k)[:k]  # exactly k, repeating when a prompt has fewer distinct rewrites


def headroom_test(pipe, step: int, *, n: int = 16, seed: int = 0, steps: int = 20, guidance: float = 4.0,
                  style: str = "explicit") -> dict:
    """``oneshot_rule`` and ``preview_rule`` (one refinement after ``step``) on ``n`` held-out prompts
    of a ShapesWorld ``pipe`` (the loop as :func:`~.evaluation.generate` runs it, the same noise for
    both), with the mean difference: the figures a shipped backbone records and the tests re-measure."""
    from promptloop.oneshot import oneshot_rewrite
    from promptloop.worlds.shapes.evaluation import generate, heldout_prompts, summarize

    users = [q for _, q in heldout_prompts(n)]
    _, oneshot = oneshot_rewrite(OneShotRule(style), users, steps)
    rule = PreviewRule(style)
    _, first = oneshot_rewrite(rule, users, steps)
    kwargs = {"seed": seed, "steps": steps, "guidance": guidance}
    base = summarize(generate(pipe, oneshot, **kwargs), users)
    seen = summarize(generate(pipe, first, policy=rule, schedule=[step], **kwargs), users)
    return {"settings": {"n": n, "seed": seed, "steps": steps, "guidance": guidance, "step": step},
            "oneshot_rule": base, "preview_rule": seen, "delta": round(seen["mean"] - base["mean"], 4),
            "changed": sum(c.changed for c in rule.log)}


def oneshot_rule(backbone: str = "backbone-e") -> OneShotRule:
    """The ``oneshot_rule`` controller for a shipped backbone."""
    return OneShotRule.for_backbone(backbone)


def preview_rule(backbone: str = "backbone-e", **options) -> PreviewRule:
    """The ``preview_rule`` controller for a shipped backbone (``options``: :class:`PreviewRule`'s)."""
    return PreviewRule(BACKBONE_INPUT.get(backbone, "explicit"), **options)


__all__ = ["BACKBONE_INPUT", "Correction", "OneShotRule", "PreviewRule", "candidate_rewrites", "headroom_test", "oneshot_rewrite_for",
           "oneshot_rule", "preview_rule", "rebind_candidates", "rebind_cells", "restate", "unseen_mentions"]
