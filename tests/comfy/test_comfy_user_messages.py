"""What a ComfyUI user is told: policy failures on the console and the strip, schedules outside the
run, step labels, unknown policy names, a missing HTTP client (no ComfyUI needed)."""

from __future__ import annotations

import logging
import os
import sys
import types

import pytest
from comfy_fakes import FakeBackend, FakeCLIP

from promptloop import RefineLoop, StaticPolicy
from promptloop.comfy_nodes.comfy_backend import PromptEncoder
from promptloop.comfy_nodes.install import library_requirement
from promptloop.comfy_nodes.nodes import (
    PromptLoopLoadPolicy,
    PromptLoopRemotePolicy,
    PromptLoopScriptedPolicy,
    PromptLoopTrace,
    hub_unusable,
    policy_folders,
)
from promptloop.comfy_nodes.segments import run_segmented


def sample(policy, schedule: str, steps: int = 6, batch: int = 1, mode: str = "sync"):
    """What the sampler node does, with ComfyUI's sampler and CLIP stood in for."""
    loop = RefineLoop(policy, schedule, mode=mode, timeout_s=30.0)
    trace, _ = run_segmented(loop, ["a red fox"] * batch, steps, FakeBackend(steps, batch), PromptEncoder(FakeCLIP()))
    return trace


def show(trace) -> str:
    """The Trace node's text output."""
    return PromptLoopTrace().show(trace, thumb_size=64, save=False)["result"][1]


def red_pixels(trace) -> int:
    """Reddish pixels of the strip: the reasons and warnings are written in red (previews are none here)."""
    return sum(1 for r, g, b in trace.render_strip(thumb=64).getdata() if r - g > 60 and r - b > 60)


def _promptloop_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "promptloop" and r.levelno == logging.WARNING]


# -- policy failures ----------------------------------------------------------------------------
def test_unreachable_remote_policy_is_reported_on_the_console_and_the_strip(caplog):
    """The Remote Policy client falls back without raising: the user must still be told."""
    (policy,) = PromptLoopRemotePolicy().connect("http://127.0.0.1:9", "promptloop", "", 2.0)
    with caplog.at_level(logging.WARNING, logger="promptloop"):
        trace = sample(policy, "1,3", batch=2)
    assert [e.fallback for e in trace.entries] == ["error"] * 4
    warnings = _promptloop_warnings(caplog)
    assert len(warnings) == 1, warnings  # one line per distinct reason, not one per sample and step
    assert "step 1 of 0-5, step 3 of 0-5 (samples 0, 1)" in warnings[0]
    assert trace.entries[0].error and trace.entries[0].error.split(":")[0] in warnings[0]
    text = show(trace)
    assert "kept prompt (error:" in text
    assert red_pixels(trace) > 0  # the reason is written on the strip


def test_raising_policy_is_reported_once_per_reason(caplog):
    def broken(obs):
        raise RuntimeError("CUDA out of memory")

    with caplog.at_level(logging.WARNING, logger="promptloop"):
        trace = sample(StaticPolicy(broken), "2")
    assert [e.fallback for e in trace.entries] == ["error"]
    summary = [w for w in _promptloop_warnings(caplog) if w.startswith("PromptLoop Sampler")]
    expected = ("PromptLoop Sampler: the policy's answer was not used at step 2 of 0-5 (sample 0): "
                "error: RuntimeError: CUDA out of memory; the prompt was kept")
    assert summary == [expected]


def test_a_working_policy_writes_no_warning_and_no_red(caplog):
    (policy,) = PromptLoopScriptedPolicy().build("{current}, detailed")
    with caplog.at_level(logging.WARNING, logger="promptloop"):
        trace = sample(policy, "1,3")
    assert _promptloop_warnings(caplog) == []
    assert [e.prompt_after for e in trace.entries] == ["a red fox, detailed", "a red fox, detailed, detailed"]
    assert red_pixels(trace) == 0
    assert "warnings" not in trace.meta


# -- the strip's text -----------------------------------------------------------------------------
def test_strip_text_is_a_truetype_font_wrapped_never_cut():
    """Readable in the page: a real font at a size that follows the thumbnails, long prompts and
    reasons wrapped between words with nothing dropped (it was Pillow's 6 px bitmap font, cut)."""
    from PIL import ImageFont

    from promptloop.trace import strip_font, wrap_text

    font = strip_font(16)
    assert isinstance(font, ImageFont.FreeTypeFont) and font.size == 16
    reason = ("kept: error: RemoteError: cannot reach http://127.0.0.1:8000/refine after 3 attempts "
              "(ConnectError: connection refused)")
    lines = wrap_text(reason, font, 200)
    assert len(lines) > 2 and " ".join(lines) == reason
    assert all(font.getlength(line) <= 200 for line in lines)
    assert wrap_text("x" * 80, font, 100) and "".join(wrap_text("x" * 80, font, 100)) == "x" * 80

    def strip_for(answer: str):
        (policy,) = PromptLoopScriptedPolicy().build(answer)
        return sample(policy, "2").render_strip(thumb=128)

    short, long = strip_for("a red fox, detailed"), strip_for("a red fox, " + "very " * 60 + "detailed")
    assert long.width == short.width and long.height > short.height + 5 * 16  # wrapped, not cut


# -- schedules outside the run ------------------------------------------------------------------
@pytest.mark.parametrize(("schedule", "needle"), [
    ("25", "step 25 never refines"),
    ("evenly:0", "asks for no refinement"),
    ("every:9", "refines at no step"),
    ("evenly:9", "asks for 9 refinements"),
])
def test_schedule_outside_the_run_warns(caplog, schedule, needle):
    (policy,) = PromptLoopScriptedPolicy().build("{current}, detailed")
    with caplog.at_level(logging.WARNING, logger="promptloop"):
        trace = sample(policy, schedule)
    warnings = _promptloop_warnings(caplog)
    assert len(warnings) == 1 and needle in warnings[0], warnings
    assert schedule in warnings[0] and "0-4" in warnings[0]  # what a 6-step run can do, 0-based
    assert trace.meta["warnings"] == [warnings[0].removeprefix("PromptLoop Sampler: ")]
    text = show(trace)
    assert text.startswith("warning: schedule ")
    assert red_pixels(trace) > 0  # and on the strip


@pytest.mark.parametrize("schedule", ["evenly:x", "sometimes:3", "0.2,late"])
def test_a_schedule_that_does_not_parse_is_rejected_when_queued(schedule):
    """ComfyUI calls VALIDATE_INPUTS before running anything: the message lists every form, 'none' too."""
    from promptloop.comfy_nodes.nodes import PromptLoopSampler

    message = PromptLoopSampler.VALIDATE_INPUTS(schedule=schedule)
    assert isinstance(message, str) and message.startswith(f"bad schedule {schedule!r}")
    for form in ("'5,10'", "'0.2,0.5'", "'evenly:5'", "'every:4'", "'random:5'", "'none'"):
        assert form in message
    tooltip = PromptLoopSampler.INPUT_TYPES()["required"]["schedule"][1]["tooltip"]
    assert all(form in tooltip for form in ("evenly:N", "every:K", "random:N", "'none'"))


@pytest.mark.parametrize("schedule", ["none", "", "25", "evenly:0", "random:2", "0.2,0.5", None])
def test_schedules_that_parse_pass_validation(schedule):
    """Including those outside the run: they warn while the run goes on (tests above)."""
    from promptloop.comfy_nodes.nodes import PromptLoopSampler

    assert PromptLoopSampler.VALIDATE_INPUTS(schedule=schedule) is True


# -- step labels ---------------------------------------------------------------------------------
def test_schedule_1_3_is_labelled_steps_1_and_3():
    (policy,) = PromptLoopScriptedPolicy().build("{current} at {step}")
    trace = sample(policy, "1,3")
    text = show(trace)
    assert [e.step for e in trace.entries] == [1, 3]
    assert "step 1 of 0-5: a red fox at 1" in text and "step 3 of 0-5: a red fox at 1 at 3" in text
    assert "step 2" not in text and "step 4" not in text


# -- Load PromptLoop Policy: unknown names -------------------------------------------------------
@pytest.fixture
def comfy_folders(tmp_path, monkeypatch):
    """ComfyUI's ``folder_paths`` (as much of it as the loader uses), with models under tmp_path.

    ComfyUI is not on PyPI; the real module is used by test_comfyui_integration.py.
    """
    registered: dict[str, list[str]] = {}
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "models")

    def add_model_folder_path(name, path, is_default=False):
        paths = registered.setdefault(name, [])
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)

    fake.add_model_folder_path = add_model_folder_path
    fake.get_folder_paths = lambda name: list(registered[name])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    extra = tmp_path / "elsewhere" / "promptloop"
    add_model_folder_path("promptloop", str(extra))  # as extra_model_paths.yaml would
    return tmp_path / "models" / "promptloop", extra


def test_unknown_policy_name_says_where_it_looked(comfy_folders):
    default, extra = comfy_folders
    assert policy_folders() == [str(extra), str(default)]
    with pytest.raises(FileNotFoundError) as info:
        PromptLoopLoadPolicy().load("my-policy", "transformers", "", "cpu", "auto", 16, 0.0)
    message = str(info.value)
    assert "policy 'my-policy' not found" in message
    assert os.path.join(str(default), "my-policy") in message and os.path.join(str(extra), "my-policy") in message
    assert os.path.abspath("my-policy") in message


def test_policy_and_adapter_found_by_name(comfy_folders, tiny_policy_dir):
    _, extra = comfy_folders
    extra.mkdir(parents=True)
    (extra / "tiny").symlink_to(tiny_policy_dir, target_is_directory=True)
    (policy,) = PromptLoopLoadPolicy().load("tiny", "transformers", "", "cpu", "auto", 8, 0.0)
    assert os.path.realpath(policy.name_or_path) == os.path.realpath(tiny_policy_dir)
    with pytest.raises(FileNotFoundError, match="adapter 'no-such-lora' not found. Searched: .*no-such-lora"):
        PromptLoopLoadPolicy().load("tiny", "transformers", "no-such-lora", "cpu", "auto", 8, 0.0)


def _never(*args, **kwargs):
    raise AssertionError("must not be called")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the node tries to load a model (and so the hub) at all."""
    import promptloop.policies

    monkeypatch.setattr(promptloop.policies, "load_policy", _never)


def test_unknown_name_with_hf_hub_offline_fails_at_once(comfy_folders, no_loading, monkeypatch):
    """HF_HUB_OFFLINE (the tests set it): no hub request, no model load - the error comes at once."""
    import httpx

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(httpx, "head", _never)
    default, extra = comfy_folders
    with pytest.raises(FileNotFoundError) as info:
        PromptLoopLoadPolicy().load("org/no-such-policy", "transformers", "", "cpu", "auto", 16, 0.0)
    message = str(info.value)
    assert "policy 'org/no-such-policy' not found" in message and "HF_HUB_OFFLINE is set" in message
    assert os.path.join(str(default), "org/no-such-policy") in message and os.path.join(str(extra), "org/no-such-policy") in message


def test_unknown_name_with_the_hub_unreachable_fails_at_once(comfy_folders, no_loading, monkeypatch):
    """Without HF_HUB_OFFLINE but with no route to the hub: one probe, then the error (was ~47 s of retries)."""
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=rf"adapter 'no-such-lora' not found\. Searched: .*127\.0\.0\.1:{closed} cannot be reached"):
        PromptLoopLoadPolicy().load(os.getcwd(), "transformers", "no-such-lora", "cpu", "auto", 16, 0.0)
    assert time.monotonic() - start < 10


def test_hub_probe_sees_a_hub_that_answers(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from huggingface_hub import constants

    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_unusable() is None
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert hub_unusable() == "HF_HUB_OFFLINE is set"
    finally:
        server.shutdown()


def test_hub_id_in_the_local_cache_is_used_offline(comfy_folders, monkeypatch, tmp_path, tiny_policy_dir):
    """Offline, a hub id already in the Hugging Face cache loads from there (looked up locally first)."""
    import shutil

    from huggingface_hub import constants

    revision = "0" * 40
    repo = tmp_path / "hf-cache" / "models--org--tiny-policy"
    shutil.copytree(tiny_policy_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    (policy,) = PromptLoopLoadPolicy().load("org/tiny-policy", "transformers", "", "cpu", "auto", 8, 0.0)
    assert os.path.realpath(policy.name_or_path) == os.path.realpath(repo / "snapshots" / revision)


# -- Remote Policy without its HTTP client -------------------------------------------------------
def test_remote_policy_without_httpx_fails_at_the_node_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)  # what `import httpx` does where it is not installed
    with pytest.raises(ImportError, match=r"pip install \"promptloop\[vision\]\"") as info:
        PromptLoopRemotePolicy().connect("http://127.0.0.1:9", "promptloop", "", 2.0)
    assert library_requirement() in str(info.value)
