"""The exact ShapesWorld reward: a prompt of the grammar against the shapes found in an image.

Per attribute, each in [0, 1] (None when the prompt does not constrain it):

- ``count``: 1 when as many shapes are found as asked for, less by the relative difference;
- ``color`` / ``shape``: among the asked-for shapes matched to found ones, the fraction whose
  colour / kind is right (an unmatched asked-for shape does not count here: it costs ``count``);
- ``size``: the same for shapes whose size the prompt states;
- ``position``: the fraction of stated cells and relations that hold (a relation with an
  unmatched end fails);
- ``mean``: the mean of the attributes that apply (0 for an image with no shape at all).

Matching is the assignment (up to 8 found shapes, exhaustive) that maximises
2·colour + 2·kind + size + cell agreement. The **held-out** metric :func:`fidelity` (never a
training reward) is the mean of how well each found shape fills its ideal outline and the share
of coloured pixels that belong to a found shape: it drops for smeared shapes and confetti.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from PIL import Image

from promptloop.worlds.shapes.analysis import Analysis, Detection, analyse
from promptloop.worlds.shapes.grammar import Mention, ParseError, Spec, parse_prompt

ATTRIBUTES: tuple[str, ...] = ("color", "shape", "count", "size", "position")
_MAX_DETECTIONS = 8


def _agreement(m: Mention, d: Detection) -> int:
    return (2 * (m.color == d.color) + 2 * (m.kind == d.kind) + (m.size is not None and m.size == d.size)
            + (m.cell is not None and m.cell == d.cell))


def match(spec: Spec, detections: Sequence[Detection]) -> dict[int, int]:
    """Mention index -> detection index, maximising the total agreement."""
    dets = list(detections)[:_MAX_DETECTIONS]
    mentions = spec.mentions
    if not mentions or not dets:
        return {}
    best, best_score = {}, -1
    if len(mentions) <= len(dets):
        for perm in itertools.permutations(range(len(dets)), len(mentions)):
            score = sum(_agreement(m, dets[j]) for m, j in zip(mentions, perm))
            if score > best_score:
                best, best_score = dict(enumerate(perm)), score
    else:
        for perm in itertools.permutations(range(len(mentions)), len(dets)):
            score = sum(_agreement(mentions[i], d) for i, d in zip(perm, dets))
            if score > best_score:
                best, best_score = {i: j for j, i in enumerate(perm)}, score
    return best


def _relation_holds(a: Detection, rel: str, b: Detection, margin: float = 4.0) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    return {"left of": ax + margin < bx, "right of": ax > bx + margin,
            "above": ay + margin < by, "below": ay > by + margin}[rel]


def score_analysis(spec: Spec, analysis: Analysis) -> dict[str, float | None]:
    """Per-attribute scores and their mean for an already parsed prompt and analysed image."""
    dets = analysis.detections
    n_exp, n_det = len(spec.mentions), len(dets)
    pairs = match(spec, dets)
    out: dict[str, float | None] = dict.fromkeys(ATTRIBUTES)
    out["count"] = 1.0 if n_det == n_exp else max(0.0, 1.0 - abs(n_det - n_exp) / n_exp)
    if pairs:
        out["color"] = sum(spec.mentions[i].color == dets[j].color for i, j in pairs.items()) / len(pairs)
        out["shape"] = sum(spec.mentions[i].kind == dets[j].kind for i, j in pairs.items()) / len(pairs)
    else:
        out["color"] = out["shape"] = 0.0
    sized = [(i, j) for i, j in pairs.items() if spec.mentions[i].size is not None]
    if any(m.size is not None for m in spec.mentions):
        out["size"] = sum(spec.mentions[i].size == dets[j].size for i, j in sized) / len(sized) if sized else 0.0
    checks = [spec.mentions[i].cell == dets[j].cell for i, j in pairs.items() if spec.mentions[i].cell is not None]
    for a, rel, b in spec.relations:
        checks.append(a in pairs and b in pairs and _relation_holds(dets[pairs[a]], rel, dets[pairs[b]]))
    if any(m.cell is not None for m in spec.mentions) or spec.relations:
        out["position"] = sum(checks) / len(checks) if checks else 0.0
    if n_det == 0:
        out = {k: (0.0 if v is not None else None) for k, v in out.items()}
    applicable = [v for v in out.values() if v is not None]
    out["mean"] = sum(applicable) / len(applicable)
    return out


def score_image(image: Image.Image, prompt: str | Spec) -> dict[str, float | None]:
    """Per-attribute scores and ``mean`` of ``image`` against ``prompt`` (ParseError if the prompt
    is not of the grammar)."""
    spec = prompt if isinstance(prompt, Spec) else parse_prompt(prompt)
    return score_analysis(spec, analyse(image))


def fidelity(image: Image.Image) -> float:
    """The held-out metric: mean outline fidelity of the found shapes, averaged with the share of
    coloured pixels they explain; 0 when nothing is found."""
    analysis = analyse(image)
    if not analysis.detections:
        return 0.0
    outline = sum(d.fidelity for d in analysis.detections) / len(analysis.detections)
    return 0.5 * outline + 0.5 * analysis.explained / max(1, analysis.foreground)


def shapes_scores(images: Sequence[Image.Image], prompts: Sequence[str],
                  attribute: str = "mean") -> list[float]:
    """One attribute (or the mean) per image; 0 for prompts outside the grammar; an attribute the
    prompt does not constrain scores 1."""
    if attribute not in ATTRIBUTES + ("mean",):
        raise ValueError(f"unknown attribute {attribute!r}; choose from {ATTRIBUTES + ('mean',)}")
    scores = []
    for image, prompt in zip(images, prompts, strict=True):
        try:
            value = score_image(image, prompt)[attribute]
        except ParseError:
            value = 0.0
        scores.append(1.0 if value is None else float(value))
    return scores
