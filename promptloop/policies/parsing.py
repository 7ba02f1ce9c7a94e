"""Turning raw policy text into a prompt, or into a recorded fallback."""

from __future__ import annotations

import re
import unicodedata

from promptloop.refinement import Fallback, Refinement

DEFAULT_MAX_PROMPT_CHARS = 600
_PREFIX = re.compile(r"^\s*(?:new|improved|refined|rewritten)?\s*prompt\s*[:\-]\s*", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def clean_prompt_text(raw: str) -> str:
    """Strip chat noise around a prompt: a ``Prompt:`` prefix, quotes, code fences, blank lines."""
    text = raw.replace("\r", "\n").strip()
    text = text.strip("`").strip()
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return ""
    line = _PREFIX.sub("", lines[0]) or (lines[1] if len(lines) > 1 else "")
    return line.strip().strip(_QUOTES).strip()


def _looks_garbled(text: str) -> bool:
    text = text.replace("\n", " ").replace("\t", " ")
    if "\ufffd" in text:
        return True
    return any(unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") for ch in text)


def prompt_problem(text: object, *, max_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> Fallback | None:
    """Why ``text`` cannot condition the sampler (``None`` when it can).

    The one set of rules every refined prompt passes, whichever backend wrote it:
    :func:`parse_refinement` applies it to a backend's parsed output, and the refinement loop
    (:class:`~promptloop.loop.RefineLoop`) to every :class:`~promptloop.refinement.Refinement`
    it is handed. Not a string, or holding control / replacement / unassigned characters:
    ``unparsable``; nothing left once whitespace, quotes and fences are stripped: ``empty``;
    longer than ``max_chars``: ``too_long``.
    """
    if not isinstance(text, str) or _looks_garbled(text):
        return Fallback.UNPARSABLE
    if not clean_prompt_text(text):
        return Fallback.EMPTY
    if len(text) > max_chars:
        return Fallback.TOO_LONG
    return None


def parse_refinement(
    raw: str | None,
    current_prompt: str,
    *,
    finished: bool = True,
    max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> Refinement:
    """Parse one policy output; any rejected output falls back to ``current_prompt``.

    ``finished`` is False when generation stopped at its token budget instead of an end token:
    the prompt may be cut mid-sentence, so it is rejected as ``truncated``.
    """
    if raw is None:
        return Refinement.fallback_to(current_prompt, Fallback.EMPTY)
    text = clean_prompt_text(raw)
    problem = Fallback.UNPARSABLE if _looks_garbled(raw) else prompt_problem(text, max_chars=max_chars)
    if problem is not None:
        return Refinement.fallback_to(current_prompt, problem, raw_text=raw)
    if not finished:
        return Refinement.fallback_to(current_prompt, Fallback.TRUNCATED, raw_text=raw)
    return Refinement(text=text, raw_text=raw, extra={_CHECKED: (text, max_chars)})


#: ``Refinement.extra`` key: the text :func:`parse_refinement` passed and the limit it used.
_CHECKED = "checked"


def passed_checks(ref: Refinement, *, max_chars: int) -> bool:
    """Whether :func:`parse_refinement` already passed ``ref.text`` (unchanged since) with a
    limit of at most ``max_chars``, so :func:`prompt_problem` need not run on it again."""
    checked = ref.extra.get(_CHECKED)
    return checked is not None and checked[0] == ref.text and checked[1] <= max_chars


_NUMBERED = re.compile(r"^\s*(\d+)\s*[.):\-]\s*(.*)$")


def parse_plan(
    raw: str | None, current_prompt: str, count: int, *, max_chars: int = DEFAULT_MAX_PROMPT_CHARS
) -> list[Refinement]:
    """Parse an ``ahead`` plan: ``count`` numbered lines; missing or bad lines fall back.

    A bad line falls back to the prompt in force before it (the previous good line or the
    original prompt), so the plan is always ``count`` long.
    """
    by_number: dict[int, str] = {}
    unnumbered: list[str] = []
    for line in (raw or "").replace("\r", "\n").split("\n"):
        if not line.strip():
            continue
        match = _NUMBERED.match(line)
        if match:
            by_number.setdefault(int(match.group(1)), match.group(2))
        else:
            unnumbered.append(line)
    out: list[Refinement] = []
    previous = current_prompt
    for i in range(1, count + 1):
        line = by_number.get(i)
        if line is None and not by_number and i - 1 < len(unnumbered):
            line = unnumbered[i - 1]
        refinement = parse_refinement(line, previous, max_chars=max_chars)
        refinement.raw_text = raw if i == 1 else line
        out.append(refinement)
        previous = refinement.text
    return out
