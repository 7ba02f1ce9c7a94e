"""``training/shapes/ship_policy.py`` reads any GRPO output folder: its costs from ``metrics.jsonl``
(a resumed run's redone steps counted once) and a fresh held-out confirmation's per-seed figures."""

from __future__ import annotations

import json

import pytest

from promptloop.training.shapes.ship_policy import _confirmation, job_costs, ship


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_job_costs_sum_the_last_row_per_step_and_the_screening(tmp_path):
    _write(tmp_path / "metrics.jsonl", [
        {"step": 0, "screen/images": 64.0},
        {"step": 1, "train/images": 16.0}, {"step": 2, "train/images": 32.0},
        {"step": 2, "eval/reward": 0.5},
        {"step": 2, "train/images": 24.0},  # resumed from step 1: step 2 redone, logged again
        {"step": 3, "train/images": 16.0}])
    assert job_costs(tmp_path) == {"steps": 3, "images": 56, "screened_images": 64}
    (tmp_path / "costs.json").write_text(json.dumps({"steps": 7, "images": 9}))
    assert job_costs(tmp_path) == {"steps": 7, "images": 9}  # the experiment's own record wins


def test_confirmation_pairs_each_run_with_the_sft_start(tmp_path):
    def rows(rewards, degenerate=0):
        return [{"reward": r, "degenerate": i < degenerate} for i, r in enumerate(rewards)]

    path = tmp_path / "confirm.json"
    path.write_text(json.dumps({"args": {"n": "4"}, "results": {
        "sft": rows([0.5, 0.5, 1.0, 1.0], degenerate=2),
        "a": rows([0.6, 0.6, 1.0, 1.0]), "b": rows([0.7, 0.5, 1.0, 1.0], degenerate=1)}}))
    out = _confirmation(path)
    assert out["sft_degenerate"] == 0.5
    assert out["runs"]["a"]["delta"] == pytest.approx(0.05) and out["runs"]["a"]["degenerate"] == 0
    assert out["runs"]["b"]["delta"] == pytest.approx(0.05) and out["runs"]["b"]["degenerate"] == 0.25
    assert out["over_seeds"]["mean"] == pytest.approx(0.05)
    assert out["over_seeds"]["low"] == pytest.approx(0.05) == out["over_seeds"]["high"]  # identical seeds


def test_ship_names_the_missing_adapter(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained adapter"):
        ship(None, 0, "backbone-c", tmp_path / "out", job=tmp_path / "nothing")
