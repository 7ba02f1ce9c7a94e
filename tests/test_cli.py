"""The command line: demo, generate (from saved directories), trace, --help."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from promptloop.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "generate", "trace"):
        assert command in result.output


def test_demo_writes_images_and_a_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLOOP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    # A short teaching run keeps the test fast; the taught policy itself is tested in test_warmup.
    result = runner.invoke(app, ["demo", "--world", "random", "--out", str(out), "--steps", "6", "--schedule", "evenly:2",
                                 "--policy-steps", "5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("image_*.png")) == ["image_00.png", "image_01.png"]
    data = json.loads((out / "trace.json").read_text())
    assert len(data["entries"]) == 4 and data["meta"]["backbone"] == "tiny-sd"
    assert all(e["preview"] and (out / e["preview"]).exists() for e in data["entries"])
    assert "<img" in (out / "trace.html").read_text()
    assert (out / "trace.png").stat().st_size > 0
    assert "trace.html" in result.output
    assert (tmp_path / "cache" / "tiny-qwen2vl-warm-5" / "config.json").exists()


def test_demo_with_an_untrained_policy_records_fallbacks(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--world", "random", "--out", str(out), "--steps", "4", "--schedule", "1",
                                 "--policy-steps", "0", "-p", "a red fox"])
    assert result.exit_code == 0, result.output
    entries = json.loads((out / "trace.json").read_text())["entries"]
    assert len(entries) == 1 and entries[0]["fallback"] in ("truncated", "unparsable", "empty", "too_long")


def test_generate_from_saved_directories(tmp_path, tiny_policy_dir):
    from promptloop.testing import save_tiny_pipeline

    backbone = save_tiny_pipeline("sdxl", tmp_path / "sdxl")
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "generate", "-p", "a red fox", "--backbone", str(backbone), "--policy", str(tiny_policy_dir),
        "--schedule", "0.5", "--mode", "async", "--steps", "4", "--height", "64", "--width", "64",
        "--num-images", "2", "--max-new-tokens", "8", "--device", "cpu", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("image_*.png"))) == 2
    trace = json.loads((out / "trace.json").read_text())
    assert trace["meta"]["mode"] == "async" and trace["meta"]["backbone"] == str(backbone)

    shown = runner.invoke(app, ["trace", str(out), "--html", str(tmp_path / "t.html")])
    assert shown.exit_code == 0 and "sample 0: a red fox" in shown.output
    assert (tmp_path / "t.html").exists()


def test_bad_schedule_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["demo", "--world", "random", "--out", str(tmp_path), "--schedule", "often",
                                 "--steps", "3"])
    assert result.exit_code != 0
    assert "schedule" in str(result.exception or result.output)
