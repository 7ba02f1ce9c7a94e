import json

from PIL import Image

from promptloop.trace import Trace, TraceEntry


def _trace() -> Trace:
    red = Image.new("RGB", (32, 32), (200, 10, 10))
    entries = [
        TraceEntry(0, 2, 10, "a fox", "a fox, snow", applied_step=2, timestep=800.0, latency_s=0.12, preview=red),
        TraceEntry(1, 2, 10, "a car", "a car", applied_step=None, fallback="timeout", error="TimeoutError: slow"),
        TraceEntry(0, 5, 10, "a fox, snow", "a fox, snow, dusk", applied_step=7, mode="async", preview=red),
    ]
    return Trace(["a fox", "a car"], entries, {"mode": "sync", "seed": 0})


def test_final_prompts_follow_applied_refinements():
    assert _trace().final_prompts() == ["a fox, snow, dusk", "a car"]
    assert [e.fallback for e in _trace().fallbacks] == ["timeout"]


def test_save_and_load_round_trip(tmp_path):
    trace = _trace()
    path = trace.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and len(data["entries"]) == 3
    assert (tmp_path / "trace.html").exists() and (tmp_path / "trace.png").exists()
    loaded = Trace.load(tmp_path)
    assert loaded.original_prompts == trace.original_prompts
    assert [(e.step, e.prompt_after, e.fallback, e.applied_step) for e in loaded.entries] == [
        (e.step, e.prompt_after, e.fallback, e.applied_step) for e in trace.entries]
    assert loaded.entries[0].preview.getpixel((0, 0)) == (200, 10, 10)
    assert loaded.entries[1].preview is None


def test_html_and_text_show_each_refinement():
    trace = _trace()
    page = trace.to_html()
    assert page.count("data:image/png;base64,") == 2
    assert "a fox, snow, dusk" in page and "kept: timeout: TimeoutError: slow" in page
    text = trace.to_text()
    assert "step 2 of 0-9: a fox, snow" in text and "kept prompt (timeout: TimeoutError: slow)" in text
    assert "applied after step 7" in text


def test_step_labels_are_0_based_like_schedules():
    """Schedule ``1,3`` of a 6-step run refines after steps 1 and 3: the labels say so."""
    from promptloop import RefineLoop, StaticPolicy
    from promptloop.trace import step_label

    loop = RefineLoop(StaticPolicy(lambda o: o.current_prompt + "!"), "1,3")
    loop.start(["p"], 6)
    for step in range(6):
        loop.at_step(step)
    trace = loop.finish()
    assert [e.step for e in trace.entries] == [1, 3]
    labels = [step_label(1, 6), step_label(3, 6)]
    assert labels == ["step 1 of 0-5", "step 3 of 0-5"]
    text, page = trace.to_text(), trace.to_html()
    for label in labels:
        assert label in text and label in page
    assert "step 2" not in text + page and "step 4" not in text + page and "/6" not in text + page


def test_strip_has_one_row_per_sample_and_shows_previews():
    strip = _trace().render_strip(thumb=64)
    assert strip.height >= 2 * 64
    pixels = strip.convert("RGB").getdata()
    assert (200, 10, 10) in set(pixels)
