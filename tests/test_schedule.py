import pytest

from promptloop.schedule import RefineSchedule, segments


@pytest.mark.parametrize(
    "spec, steps, expected",
    [
        ("none", 50, []),
        (None, 50, []),
        ("5,10,15", 50, [5, 10, 15]),
        ([5, 10, 99], 20, [5, 10]),  # past the last useful step: dropped
        ("0.2,0.4,0.6", 50, [10, 20, 30]),
        ([0.5], 10, [5]),
        ("every:10", 50, [9, 19, 29, 39]),
        ("evenly:5", 50, [7, 16, 24, 32, 41]),
        ("5x", 50, [7, 16, 24, 32, 41]),
        ("evenly:3", 4, [0, 1, 2]),
        ("3,3,1", 10, [1, 3]),
        ("evenly:2", 1, []),
    ],
)
def test_resolve(spec, steps, expected):
    assert RefineSchedule.parse(spec).resolve(steps) == expected


def test_never_refines_after_the_last_step():
    for n in range(2, 40):
        for spec in ("evenly:5", "every:1", "0.99", "random:8"):
            resolved = RefineSchedule.parse(spec).resolve(n)
            assert all(0 <= s <= n - 2 for s in resolved)
            assert resolved == sorted(set(resolved))


def test_random_schedule_is_reproducible_with_a_seed():
    a = RefineSchedule.random(5, seed=3).resolve(50)
    assert a == RefineSchedule.random(5, seed=3).resolve(50) and len(a) == 5


@pytest.mark.parametrize("bad", ["often", "every:x", "1.5", "-3", "fast:2"])
def test_bad_specs_give_clear_errors(bad):
    with pytest.raises(ValueError, match="schedule"):
        RefineSchedule.parse(bad)


def test_segments():
    assert segments([2, 5], 8) == [(0, 3), (3, 6), (6, 8)]
    assert segments([], 4) == [(0, 4)]
    assert segments([3], 4) == [(0, 4)]  # a refinement after the last step splits nothing
    assert segments([0], 3) == [(0, 1), (1, 3)]


@pytest.mark.parametrize(
    "spec, steps, needles",
    [
        ("evenly:3", 20, []),
        ("1,3", 6, []),
        ("none", 6, []),
        (None, 6, []),
        ("4", 6, []),  # step 4 of 0-5 is the last that can refine
        ("5", 6, ["step 5 never refines", "0-4"]),
        ("25", 6, ["'25'", "step 25 never refines", "0-4"]),
        ([2, 30, 40], 6, ["steps 30, 40 never refine"]),
        ("evenly:0", 6, ["'evenly:0' asks for no refinement", "'none'"]),
        ("every:0", 6, ["asks for no refinement"]),
        ("every:9", 6, ["'every:9' refines at no step", "0-4"]),
        ("evenly:9", 6, ["asks for 9 refinements", "so it makes 5"]),
        ("0.1,0.12", 6, ["fall on the same step"]),
        ("evenly:2", 1, ["no step to refine at"]),
    ],
)
def test_warnings_say_what_a_run_cannot_do(spec, steps, needles):
    warnings = RefineSchedule.parse(spec).warnings(steps)
    assert len(warnings) == (1 if needles else 0), warnings
    for needle in needles:
        assert needle in warnings[0]
