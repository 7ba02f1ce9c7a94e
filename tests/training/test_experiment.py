"""The ShapesWorld experiment command on its reduced (CI) setting writes every artefact, with
every row of the issue present (issue 11)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from promptloop.cli import app
from promptloop.training.shapes.experiment_report import LABELS

ROWS = ("a", "a-sft", "a-sft-oneshot", "b", "c-sync", "c-async", "c-ahead", "a-B", "d", "e", "e+c")


@pytest.mark.slow
def test_reduced_experiment_writes_every_artefact(tmp_path):
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", "shapes", "--reduced", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("results.md", "results.csv", "summary.json", "rewards.png", "curves.png",
                 "strip_before.png", "strip_after.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == set(ROWS)
    for row in ROWS:
        assert {"shapes", "shapes_fidelity"} <= set(summary["rows"][row]), row
        assert 0.0 <= summary["rows"][row]["shapes"]["mean"] <= 1.0
    assert set(summary["training_costs"]) == {"b", "c-sync", "e"}
    assert summary["training_costs"]["c-sync"]["policy_tokens"] > 0
    assert summary["training_costs"]["e"]["policy_tokens"] == 0
    # the curve of (b) and (c): held-out reward and fidelity at step 0 and after training
    for prefix in ("grpo-oneshot", "grpo-stepwise"):
        points = summary["curves"][prefix]["0"]
        assert [p["step"] for p in points] == [0, 1]
        assert all(p["fidelity"] is not None for p in points)
    table = (out / "results.md").read_text()
    for row in ROWS:
        assert LABELS[row] in table
    with (out / "results.csv").open() as fh:
        assert {r["row"] for r in csv.DictReader(fh)} == set(ROWS)

    # a second run trains nothing and recomputes no cell
    before = {p: p.stat().st_mtime for p in (out / "eval" / "cells").iterdir()}
    again = CliRunner().invoke(app, ["experiment", "shapes", "--reduced", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "training" not in again.output.split("evaluating")[0].replace("training 3 runs", "")
    assert {p: p.stat().st_mtime for p in (out / "eval" / "cells").iterdir()} == before


def test_the_descriptive_preset_runs_on_backbones_c_and_d_and_names_them():
    from promptloop.training.shapes.experiment_report import label
    from promptloop.training.shapes.jobs import DESCRIPTIVE, FULL

    assert DESCRIPTIVE.backbone_a.endswith("backbone-c") and DESCRIPTIVE.backbone_b.endswith("backbone-d")
    assert (DESCRIPTIVE.grpo_steps, DESCRIPTIVE.train_seeds) == (FULL.grpo_steps, FULL.train_seeds)
    assert label("a", DESCRIPTIVE) == "(a) backbone C alone"
    assert label("d", DESCRIPTIVE) == "(d) (c) policy on backbone D"
    assert label("e+c", DESCRIPTIVE) == "(e) DDPO-tuned C + (c) policy"
    assert label("a", FULL) == LABELS["a"] == "(a) backbone A alone"


def test_the_stages_import_the_definitions_not_each_other():
    """No import circle: the evaluation and the report need the job definitions (jobs.py), never the
    command module that runs the trainings."""
    import subprocess
    import sys

    code = ("import sys, promptloop.training.shapes.experiment_report; "
            "print('promptloop.training.shapes.experiment' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
