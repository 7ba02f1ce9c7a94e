"""The lever study's summary (benchmarks/study_grpo_levers.py): paired differences to the SFT start,
resumed-run deduplication and the table, on hand-made run folders (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "study_grpo_levers.py"
_spec = importlib.util.spec_from_file_location("study_grpo_levers", SCRIPT)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def _write_run(folder: Path, steps: list[tuple[float, float]], evals: dict[int, tuple[float, float, float]],
               degenerate: list[bool], *, redo: int = 0) -> None:
    """A finished run: ``steps`` (images, reward) from step 1, ``evals`` {step: (images, exact,
    fidelity)}; ``redo``: the last ``redo`` steps logged twice (a resumed run), the first time wrong."""
    folder.mkdir(parents=True)
    rows = []
    for i, (images, reward) in enumerate(steps, start=1):
        if i > len(steps) - redo:
            rows.append({"step": i, "train/images": 999.0, "reward/mean": -1.0, "study/cpu_s": 100.0})
    for i, (images, reward) in enumerate(steps, start=1):
        rows.append({"step": i, "train/images": images, "reward/mean": reward, "study/cpu_s": 2.0})
    for step, (images, exact, fid) in evals.items():
        rows.append({"step": step, "eval/reward": exact, "eval/shapes": exact, "eval/metric/shapes_fidelity": fid})
        rows.append({"step": step, "study/images": images, "study/cpu_s": 5.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval").mkdir()
    (folder / "eval" / f"step-{max(evals)}.jsonl").write_text(
        "".join(json.dumps({"degenerate": d}) + "\n" for d in degenerate))
    (folder / "done.json").write_text("{}")


def test_paired_differences_and_their_t_interval():
    diffs, iv = study.paired({0: 0.92, 1: 0.90, 2: 0.95, 3: 0.5}, {0: 0.90, 1: 0.91, 2: 0.92})
    assert diffs == pytest.approx({0: 0.02, 1: -0.01, 2: 0.03})  # seed 3 has no start: left out
    mean = 0.04 / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in (0.02, -0.01, 0.03)) / 2)
    half = 4.3027 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert iv.n == 3 and iv.mean == pytest.approx(mean)
    assert (iv.low, iv.high) == pytest.approx((mean - half, mean + half), abs=1e-4)
    assert study.fmt_diff(iv).startswith(f"{mean:+.3f} ± {half:.3f} [")
    assert study.fmt_diff(study.paired({0: 0.9}, {0: 0.8})[1]) == "+0.100 (n=1)"


def test_load_run_sums_images_and_keeps_a_resumed_runs_last_rows(tmp_path):
    _write_run(tmp_path / "run", [(16.0, 0.8), (24.0, 0.9), (16.0, 1.0)],
               {2: (40.0, 0.91, 0.94), 3: (56.0, 0.93, 0.95)}, [True, False, False, False], redo=2)
    run = study.load_run(tmp_path / "run")
    assert run["steps"] == 3 and run["images"] == 56.0
    assert run["train_curve"] == [(16.0, 0.8), (40.0, 0.9), (56.0, 1.0)]
    assert run["heldout"] == [(40.0, 0.91, 0.94), (56.0, 0.93, 0.95)]
    assert (run["exact"], run["fidelity"], run["degenerate"]) == (0.93, 0.95, 0.25)
    assert run["train_cpu_s"] == 6.0 and run["eval_cpu_s"] == 10.0
    assert run["screen_images"] == 0.0
    assert study.load_run(tmp_path / "missing") is None


def test_load_run_counts_the_screening_in_images_and_cpu_seconds(tmp_path):
    _write_run(tmp_path / "run", [(16.0, 0.8)], {1: (16.0, 0.91, 0.94)}, [False])
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 0, "screen/images": 64.0, "screen/cpu_s": 7.0, "screen/kept": 9.0}) + "\n")
    run = study.load_run(tmp_path / "run")
    assert run["screen_images"] == 64.0 and run["images"] == 16.0 and run["train_cpu_s"] == 9.0
    _write_run(study.run_dir(tmp_path, "start", 0), [], {0: (0.0, 0.9, 0.9)}, [False])
    (tmp_path / "run").rename(study.run_dir(tmp_path, "screened", 0))
    table, _ = study.summarize(tmp_path, ["screened"], [0])
    assert "| 16 + 64 screened |" in table


def test_summary_table_pairs_each_arm_with_the_start_of_its_seed(tmp_path):
    for seed, (start, off) in enumerate([(0.90, 0.92), (0.91, 0.90), (0.92, 0.95)]):
        _write_run(study.run_dir(tmp_path, "start", seed), [], {0: (0.0, start, 0.9)}, [False] * 4)
        _write_run(study.run_dir(tmp_path, "off", seed), [(16.0, 0.9)], {1: (16.0, off, 0.9)}, [False] * 4)
    table, runs = study.summarize(tmp_path, ["off", "raft"], [0, 1, 2])
    row = next(line for line in table.splitlines() if line.startswith("| off |"))
    assert "+0.020, -0.010, +0.030" in row
    assert study.fmt_diff(study.paired({0: 0.92, 1: 0.90, 2: 0.95}, {0: 0.90, 1: 0.91, 2: 0.92})[1]) in row
    assert "| raft | 0 |" in table and "(not run)" in table
    assert set(runs["off"]) == {0, 1, 2} and runs["raft"] == {}


def test_a_one_shot_arm_is_paired_with_the_start_evaluated_one_shot(tmp_path):
    assert study.start_of("screened_oneshot") == "start_oneshot" and study.start_of("screened") == study.START
    assert study.ARMS["screened_oneshot"]["eval_schedule"] == study.STARTS["start_oneshot"]["eval_schedule"] == "oneshot"
    for seed in (0, 1):
        _write_run(study.run_dir(tmp_path, "start", seed), [], {0: (0.0, 0.90, 0.9)}, [False])
        _write_run(study.run_dir(tmp_path, "start_oneshot", seed), [], {0: (0.0, 0.80, 0.9)}, [True])
        _write_run(study.run_dir(tmp_path, "screened_oneshot", seed), [(64.0, 0.9)], {1: (64.0, 0.85, 0.9)}, [False])
    table, _ = study.summarize(tmp_path, ["screened_oneshot"], [0, 1])
    row = next(line for line in table.splitlines() if line.startswith("| screened_oneshot |"))
    assert "+0.050, +0.050" in row  # against the one-shot start (0.80), not the step-wise one (0.90)
    assert "| SFT start (one-shot) | 2 |" in table and "| SFT start | 2 |" in table
