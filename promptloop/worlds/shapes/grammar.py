"""The ShapesWorld caption grammar: several phrasings of one scene, and the parser back.

Phrasings (``STYLES``) of a scene with a large red circle at the top left, a small red circle at the
bottom right and a small blue square in the centre:

- ``terse``: "two red circles and a blue square"
- ``counted``: "three shapes: two red circles and one blue square"
- ``sized``: "a large red circle, a small blue square and a small red circle"
- ``placed``: "a red circle at the top left, a blue square in the centre and a red circle at the bottom right"
- ``full``: "a large red circle at the top left, a small blue square in the centre and a small red
  circle at the bottom right"
- ``relational``: "a red circle left of a blue square left of a red circle" (each relation links a
  shape to the next one in the chain)

Grammar (words only from :data:`VOCABULARY`)::

    prompt  := [NUMBER ("shape"|"shapes") ":"] chain (("," ["and"] | "and") chain)*
    chain   := np (RELATION np)*            -- an np inside a relation chain names one shape
    np      := DET [SIZE] COLOUR KIND [POSITION]
    DET     := a | an | one | two | three
    POSITION:= at the top left | at the top | ... | in the centre   (see scene.CELL_PHRASES)
    RELATION:= left of | right of | above | below

:func:`parse_prompt` turns a prompt into a :class:`Spec` (the shapes it asks for, with the
attributes it states); it raises :class:`ParseError` on anything outside the grammar.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from promptloop.worlds.shapes.scene import CELL_PHRASES, COLORS, KINDS, SIZES, Scene, Shape, relation

STYLES: tuple[str, ...] = ("terse", "counted", "sized", "placed", "full", "relational")
NUMBERS: dict[str, int] = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
_PHRASE_CELLS = {phrase: cell for cell, phrase in CELL_PHRASES.items()}
_PLURALS = {kind + "s": kind for kind in KINDS}

#: Every word a caption of the grammar may contain (the backbone's tokenizer vocabulary).
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    list(NUMBERS) + ["shape", "shapes", ":", ",", "and"] + list(SIZES) + list(COLORS) + list(KINDS)
    + list(_PLURALS) + " ".join(CELL_PHRASES.values()).split() + " ".join(RELATIONS).split()
))


class ParseError(ValueError):
    """The prompt is not a sentence of the ShapesWorld grammar."""


@dataclass(frozen=True)
class Mention:
    """One shape a prompt asks for; ``size`` and ``cell`` are None when the prompt does not say."""

    color: str
    kind: str
    size: str | None = None
    cell: tuple[int, int] | None = None


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for: the shapes (expanded: "two red circles" is two mentions), the
    relations between them as ``(i, relation, j)`` over mention indices, and the stated total."""

    mentions: tuple[Mention, ...]
    relations: tuple[tuple[int, str, int], ...] = ()
    total: int | None = None

    def color_kinds(self) -> Counter:
        """How many shapes of each (colour, kind) the prompt asks for."""
        return Counter((m.color, m.kind) for m in self.mentions)

    def attributes(self) -> dict:
        """A canonical, order-free summary: what every phrasing of one scene agrees on."""
        return {"count": len(self.mentions), "color_kinds": dict(sorted(self.color_kinds().items()))}


@dataclass
class _Tokens:
    words: list[str]
    pos: int = 0
    consumed: list[str] = field(default_factory=list)

    def peek(self, n: int = 1) -> list[str]:
        return self.words[self.pos:self.pos + n]

    def take(self) -> str:
        if self.pos >= len(self.words):
            raise ParseError("unexpected end of prompt")
        word = self.words[self.pos]
        self.pos += 1
        return word

    def done(self) -> bool:
        return self.pos >= len(self.words)


def tokenize(prompt: str) -> list[str]:
    """Lower-case words, with ``:`` and ``,`` as their own tokens (``center`` reads as ``centre``)."""
    text = re.sub(r"([:,])", r" \1 ", prompt.lower().replace("center", "centre")).replace(".", " ")
    return text.split()


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(shape: Shape, *, size: bool, position: bool) -> str:
    words = ([shape.size] if size else []) + [shape.color, shape.kind]
    text = f"{_article(words[0])} {' '.join(words)}"
    return f"{text} {CELL_PHRASES[shape.cell]}" if position else text


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(scene: Scene) -> list[tuple[tuple[str, str], int]]:
    counts: Counter = Counter()
    for shape in scene.shapes:
        counts[(shape.color, shape.kind)] += 1
    return list(counts.items())  # first-appearance order


def caption(scene: Scene, style: str = "terse") -> str:
    """The scene described in one of :data:`STYLES`."""
    if not scene.shapes:
        raise ValueError("an empty scene has no caption")
    if style == "terse" or style == "counted":
        parts = []
        for (color, kind), n in _groups(scene):
            if n == 1:
                det = "one" if style == "counted" else _article(color)
                parts.append(f"{det} {color} {kind}")
            else:
                parts.append(f"{_NUMBER_WORDS[n]} {color} {kind}s")
        body = _join(parts)
        if style == "counted":
            n = len(scene.shapes)
            return f"{_NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}: {body}"
        return body
    if style in ("sized", "placed", "full"):
        return _join([_np(s, size=style != "placed", position=style != "sized") for s in scene.shapes])
    if style == "relational":
        if len(scene.shapes) == 1:
            return _np(scene.shapes[0], size=False, position=True)
        text = _np(scene.shapes[0], size=False, position=False)
        for a, b in zip(scene.shapes, scene.shapes[1:]):
            text += f" {relation(a, b)} {_np(b, size=False, position=False)}"
        return text
    if style in EXTRA_STYLES:  # captions that do not match the scene (appended below)
        return EXTRA_STYLES[style](scene)
    raise ValueError(f"unknown caption style {style!r}; choose from {STYLES}")


def explicit_caption(shapes: Sequence[Shape]) -> str:
    """The ``full`` phrasing of ``shapes`` in the order given (e.g. the order a user named them)."""
    if not shapes:
        raise ValueError("no shapes to describe")
    return _join([_np(s, size=True, position=True) for s in shapes])


def all_captions(scene: Scene) -> dict[str, str]:
    """Every phrasing of the scene, by style."""
    return {style: caption(scene, style) for style in STYLES}


#: How often each style appears among training captions.
TRAIN_STYLE_WEIGHTS: dict[str, float] = {
    "terse": 0.25, "counted": 0.1, "sized": 0.1, "placed": 0.15, "full": 0.25, "relational": 0.15,
}


#: A *descriptive* caption mix, as DALL-E 3 trained on 95 % synthetic descriptive captions
#: (Betker et al., 2023): nearly every training caption is ``full``, so the short phrasings users
#: type are rare in training, and rewriting them into the explicit form has room to help.
DESCRIPTIVE_STYLE_WEIGHTS: dict[str, float] = {
    "full": 0.95, "terse": 0.01, "counted": 0.01, "sized": 0.01, "placed": 0.01, "relational": 0.01,
}
#: Caption mixes a backbone can be trained on, by name.
CAPTION_MIXES: dict[str, dict[str, float]] = {"mixed": TRAIN_STYLE_WEIGHTS, "descriptive": DESCRIPTIVE_STYLE_WEIGHTS}


def random_caption(scene: Scene, rng: random.Random, weights: dict[str, float] = TRAIN_STYLE_WEIGHTS) -> str:
    """A caption in a style drawn from ``weights`` (default :data:`TRAIN_STYLE_WEIGHTS`)."""
    style = rng.choices(list(weights), weights=list(weights.values()))[0]
    return caption(scene, style)


# --------------------------------------------------------------------------- parser


def _parse_np(tokens: _Tokens) -> tuple[int, Mention]:
    det = tokens.take()
    if det not in NUMBERS:
        raise ParseError(f"expected a/an/one/two/three, got {det!r}")
    n = NUMBERS[det]
    size = tokens.take() if tokens.peek() and tokens.peek()[0] in SIZES else None
    color = tokens.take()
    if color not in COLORS:
        raise ParseError(f"expected a colour, got {color!r}")
    word = tokens.take()
    kind = _PLURALS.get(word, word)
    if kind not in KINDS:
        raise ParseError(f"expected a shape, got {word!r}")
    if (n > 1) != (word in _PLURALS):
        raise ParseError(f"{det!r} does not agree with {word!r}")
    cell = None
    for phrase, phrase_cell in sorted(_PHRASE_CELLS.items(), key=lambda kv: -len(kv[0])):
        words = phrase.split()
        if tokens.peek(len(words)) == words:
            tokens.pos += len(words)
            cell = phrase_cell
            break
    if cell is not None and n > 1:
        raise ParseError("several shapes cannot share one position")
    return n, Mention(color, kind, size, cell)


def _parse_relation(tokens: _Tokens) -> str | None:
    for rel in RELATIONS:
        words = rel.split()
        if tokens.peek(len(words)) == words:
            tokens.pos += len(words)
            return rel
    return None


def parse_prompt(prompt: str) -> Spec:
    """Parse a prompt of the grammar into a :class:`Spec`; :class:`ParseError` otherwise."""
    tokens = _Tokens(tokenize(prompt))
    if not tokens.words:
        raise ParseError("empty prompt")
    total = None
    if len(tokens.words) > 2 and tokens.words[1] in ("shape", "shapes") and tokens.words[2] == ":":
        if tokens.words[0] not in NUMBERS:
            raise ParseError(f"expected a number before {tokens.words[1]!r}")
        total = NUMBERS[tokens.words[0]]
        tokens.pos = 3
    mentions: list[Mention] = []
    relations: list[tuple[int, str, int]] = []
    while True:
        n, mention = _parse_np(tokens)
        mentions.extend([mention] * n)
        while (rel := _parse_relation(tokens)) is not None:
            if n != 1:
                raise ParseError("a relation needs one shape on each side")
            left = len(mentions) - 1
            n, mention = _parse_np(tokens)
            if n != 1:
                raise ParseError("a relation needs one shape on each side")
            mentions.append(mention)
            relations.append((left, rel, len(mentions) - 1))
        if tokens.done():
            break
        sep = tokens.take()
        if sep == ",":
            if tokens.peek() == ["and"]:
                tokens.take()
        elif sep != "and":
            raise ParseError(f"unexpected word {sep!r}")
    if total is not None and total != len(mentions):
        raise ParseError(f"the prompt says {total} shapes but names {len(mentions)}")
    if len(mentions) > 9:
        raise ParseError("more shapes than cells")
    cells = [m.cell for m in mentions if m.cell is not None]
    if len(set(cells)) != len(cells):
        raise ParseError("two shapes are placed in the same cell")
    return Spec(tuple(mentions), tuple(relations), total)


def is_valid_prompt(prompt: str) -> bool:
    """True when :func:`parse_prompt` accepts the prompt."""
    try:
        parse_prompt(prompt)
    except ParseError:
        return False
    return True


# --------------------------------------------------------------------------- phantom captions (issue 22)


def phantom_shapes(scene: Scene) -> list[Shape]:
    """The scene's shapes in reading order with one *phantom* shape inserted (a shape the image
    lacks): random colour, kind and size, in a free cell, at a random position other than the first.
    Deterministic per scene (drawn from its seed), so a training caption is reproducible."""
    rng = random.Random(f"phantom {scene.seed if scene.seed is not None else scene.shapes}")
    used = {s.cell for s in scene.shapes}
    cell = rng.choice([c for c in CELL_PHRASES if c not in used])
    phantom = Shape(rng.choice(sorted(COLORS)), rng.choice(KINDS), rng.choice(SIZES), cell)
    shapes = list(scene.shapes)
    shapes.insert(rng.randint(1, len(shapes)), phantom)
    return shapes


def phantom_caption(scene: Scene) -> str:
    """A ``full`` caption that also names a shape the image lacks (never first): noisy alt-text, as
    web captions name what is out of frame or hidden."""
    return explicit_caption(phantom_shapes(scene))


#: Caption styles outside :data:`STYLES` (training only; they do not describe the scene exactly).
EXTRA_STYLES: dict = {"phantom": phantom_caption}

#: A *phantom* caption mix (issue 22): every caption is explicit (``full``), but 60 % of them also
#: name a shape the image lacks, never first. A backbone trained on it learns that a later-named
#: shape is present only sometimes, and which one it draws depends on the noise; the first-named
#: shape is always drawn.
PHANTOM_STYLE_WEIGHTS: dict[str, float] = {"full": 0.4, "phantom": 0.6}
CAPTION_MIXES["phantom"] = PHANTOM_STYLE_WEIGHTS

#: The same with 80 % phantom captions (issue 22's second try: more neglect, the same lever).
CAPTION_MIXES["phantom-heavy"] = {"full": 0.2, "phantom": 0.8}


# --------------------------------------------------------------------------- leaky captions (issue 22)


def swapped_shapes(scene: Scene) -> list[Shape]:
    """The scene's shapes in reading order with the colours of two differently coloured shapes
    swapped (the pair drawn from the scene's seed); unchanged when every shape has one colour."""
    shapes = list(scene.shapes)
    pairs = [(i, j) for i in range(len(shapes)) for j in range(i + 1, len(shapes)) if shapes[i].color != shapes[j].color]
    if not pairs:
        return shapes
    i, j = random.Random(f"swap {scene.seed if scene.seed is not None else scene.shapes}").choice(pairs)
    a, b = shapes[i], shapes[j]
    shapes[i], shapes[j] = Shape(b.color, a.kind, a.size, a.cell), Shape(a.color, b.kind, b.size, b.cell)
    return shapes


def swapped_caption(scene: Scene) -> str:
    """A ``full`` caption that binds two of the scene's colours to each other's shapes (attribute
    leakage in the captions: the image has the other binding)."""
    return explicit_caption(swapped_shapes(scene))


EXTRA_STYLES["swapped"] = swapped_caption

#: A *leaky* caption mix (issue 22, third try: attribute leakage): every caption is explicit, but
#: 35 % of them swap two shapes' colours. A backbone trained on it draws, for an explicit prompt, the
#: stated colour binding or the swapped one, the noise deciding; colours show early in a preview, and
#: where the user fixed no positions, a controller can re-bind the kinds to the colours it sees.
CAPTION_MIXES["leaky"] = {"full": 0.65, "swapped": 0.35}
