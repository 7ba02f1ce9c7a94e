"""The command line: demo, generate (from saved directories), trace, --help."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from promptloop.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "generate", "trace", "serve", "comfy", "train"):
        assert command in result.output


SURFACES = ("promptloop.server", "promptloop.comfy_nodes", "promptloop.training")


def test_the_library_and_the_cli_import_no_surface():
    code = (
        "import sys\n"
        "import promptloop, promptloop.cli, promptloop.policies, promptloop.rewards\n"
        "from promptloop.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        f"print('LOADED', sorted(m for m in sys.modules if m.startswith({SURFACES!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for command in ("serve", "comfy", "train"):
        assert command in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "LOADED []"


def test_surface_commands_load_on_call_and_pass_their_arguments_through():
    served = runner.invoke(app, ["serve", "--help"])
    assert served.exit_code == 0 and "--policy" in served.output and "--api-key" in served.output
    comfy = runner.invoke(app, ["comfy", "install", "--help"])
    assert comfy.exit_code == 0 and "--comfyui" in comfy.output
    wrong = runner.invoke(app, ["serve", "--polcy", "x"])
    assert wrong.exit_code == 2 and "--polcy" in wrong.output


def test_a_missing_surface_is_a_clear_error():
    code = (
        "import sys\n"
        "sys.modules['promptloop.training.cli'] = None  # as if the trainers were not installed\n"
        "from promptloop.cli import app\n"
        "app(['train', '--help'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "`promptloop train` is not available: promptloop.training.cli" in done.stderr
    assert "Traceback" not in done.stderr


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


def test_bad_training_config_exits_2_with_one_line_and_no_trainer_imported(tmp_path):
    """The real entry point in a fresh process: each bad config is one stderr line and exit status 2,
    and no trainer module (hence no model) was even imported."""
    cases = [["grpo", "--set", "learning_rate=-0.001"],
             ["ddpo", "--set", f"prompts={tmp_path}/missing.txt"],
             ["b2", "--set", "reward=jpeg_compressibility:1,no_such_reward:0.5"],
             ["grpo", "--set", f"backbone={tmp_path}/no-such-backbone"]]
    code = (
        "import sys\n"
        "from promptloop.cli import app\n"
        f"for args in {cases!r}:\n"
        "    try:\n"
        "        app(['train', *args, '--set', 'output_dir=" + str(tmp_path / "run") + "'])\n"
        "    except SystemExit as exc:\n"
        "        print('EXIT', exc.code)\n"
        "trainers = ('promptloop.training.grpo.trainer', 'promptloop.training.diffusion.ddpo',\n"
        "            'promptloop.training.diffusion.b2')\n"
        "print('IMPORTED', [m for m in trainers if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["EXIT", "2"] * 4 + ["IMPORTED", "[]"], (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 4, done.stderr
    for line, needle in zip(lines, ["learning_rate=-0.001", "prompts=", "no_such_reward", "no-such-backbone"]):
        assert line.startswith("error: ") and needle in line, line
    assert not (tmp_path / "run").exists()
