import pytest

from promptloop.policies.parsing import parse_plan, parse_refinement
from promptloop.refinement import Fallback


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a red fox, golden hour", "a red fox, golden hour"),
        ('  "a red fox"  ', "a red fox"),
        ("Prompt: a red fox\n", "a red fox"),
        ("Improved prompt: a red fox", "a red fox"),
        ("```\na red fox\n```", "a red fox"),
        ("a red fox\n\nI made it warmer.", "a red fox"),
    ],
)
def test_clean_outputs_are_accepted(raw, expected):
    ref = parse_refinement(raw, "current")
    assert ref.applied and ref.text == expected and ref.raw_text == raw


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, Fallback.EMPTY),
        ("", Fallback.EMPTY),
        ("   \n  ", Fallback.EMPTY),
        ('""', Fallback.EMPTY),
        ("x" * 601, Fallback.TOO_LONG),
        ("a fox \ufffd\ufffd", Fallback.UNPARSABLE),
        ("a fox \x00\x07", Fallback.UNPARSABLE),
    ],
)
def test_bad_outputs_fall_back_to_the_current_prompt(raw, reason):
    ref = parse_refinement(raw, "current prompt")
    assert ref.fallback == reason and ref.text == "current prompt" and not ref.applied


def test_truncated_generation_falls_back():
    ref = parse_refinement("a red fox standing in", "current", finished=False)
    assert ref.fallback == Fallback.TRUNCATED and ref.text == "current"


def test_plan_parsing_fills_missing_lines_with_the_prompt_in_force():
    plan = parse_plan("1. a fox\n3. a fox, snow\n", "orig", 3)
    assert [r.text for r in plan] == ["a fox", "a fox", "a fox, snow"]
    assert [r.fallback for r in plan] == [None, Fallback.EMPTY, None]
    unnumbered = parse_plan("a fox\na fox, snow", "orig", 2)
    assert [r.text for r in unnumbered] == ["a fox", "a fox, snow"]
