"""Faults found by trying the sidecar as a new user and as an attacker (issue 8), over real HTTP.

Each test failed before its fix: extreme aspect ratios and lone surrogates got 503, one bad
request failed the good ones batched with it, a latent escaped the pixel limit, the policy
input had no bound in tokens, and an unknown backbone name was accepted when unused.
"""

from __future__ import annotations

import concurrent.futures
import random
import string
import threading

import pytest
import torch
from conftest import server_settings, start_server
from PIL import Image
from trained_policy import BASE_ANSWER

from promptloop.wire import encode_image, encode_latents


def _png(size=(64, 64), color=(200, 40, 40)) -> str:
    return encode_image(Image.new("RGB", size, color))


def _good(**extra) -> dict:
    return {"prompt": "a red fox", "step": 2, "num_steps": 10, "image": _png(), **extra}


def _letters(n: int, seed: int) -> str:
    """Random letters: about one token per character for the tiny tokenizer."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters) for _ in range(n))


# An input far above both test servers' token bounds (vLLM: 2048 - 24, transformers: 4096 - 24),
# though every field is within the character limits.
LONG_INPUT = {"prompt": _letters(4000, 1), "history": [_letters(3000, 2)], "step": 2, "num_steps": 10}


# -- 1. extreme aspect ratios ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 300), (300, 1)], ids=["1x300", "300x1"])
def test_extreme_aspect_ratio_previews_are_padded_not_503(live_server, size):
    with live_server.client() as c:
        r = c.post("/refine", json=_good(image=_png(size)))
    assert r.status_code == 200, r.text
    assert len(r.json()["refinements"]) == 1


# -- 2. lone surrogates ----------------------------------------------------------------------------
SURROGATE_BODIES = {
    "/refine prompt": ("/refine", b'{"prompt": "a red \\ud800 fox", "step": 1, "num_steps": 4}', "prompt"),
    "/refine current_prompt": (
        "/refine", b'{"prompt": "a fox", "current_prompt": "a \\udfff fox", "step": 1, "num_steps": 4}',
        "current_prompt"),
    "/refine history": (
        "/refine", b'{"items": [{"prompt": "a fox", "history": ["ok", "a \\ud83d fox"]}], "step": 1, "num_steps": 4}',
        "items[0].history[1]"),
    "/plan prompts": ("/plan", b'{"prompts": ["a cat", "a red \\ud800 fox"], "steps": [1], "num_steps": 4}',
                      "prompts[1]"),
}


def test_lone_surrogates_are_a_422(live_server):
    with live_server.client() as c:
        for name, (path, raw, where) in SURROGATE_BODIES.items():
            r = c.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (name, r.status_code, r.text)
            detail = r.json()["detail"]
            assert "surrogate" in detail and where in detail, (name, detail)
        assert c.post("/refine", json=_good()).json()["prompt"] == BASE_ANSWER


# -- 3. a request's failure stays its own (transformers micro-batching) ----------------------------
@pytest.fixture(scope="module")
def batching_server(trained_dirs):
    """A transformers sidecar that waits long enough to put concurrent requests in one batch."""
    policy_dir, adapter_dir = trained_dirs
    live = start_server(server_settings(policy_dir, adapter_dir, "unused", "transformers", backbones={},
                                        batch_wait_ms=500, warmup=False))
    yield live
    live.stop()


BAD_AMONG_GOOD = {
    "300x1 image": (_good(image=_png((300, 1))), 200),
    "lone surrogate": ('{"prompt": "a red \\ud800 fox", "step": 1, "num_steps": 4}', 422),
    "input over the token bound": (LONG_INPUT, 413),
}


@pytest.mark.parametrize("kind", list(BAD_AMONG_GOOD))
def test_one_bad_request_does_not_fail_the_good_ones_batched_with_it(batching_server, kind):
    bad, bad_status = BAD_AMONG_GOOD[kind]
    bodies = [_good(prompt=f"a red fox {i}") for i in range(6)] + [bad]
    start = threading.Barrier(len(bodies))

    def send(body):
        with batching_server.client() as c:
            start.wait()
            if isinstance(body, str):
                return c.post("/refine", content=body.encode(), headers={"Content-Type": "application/json"})
            return c.post("/refine", json=body)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(send, bodies))
    good, bad_answer = answers[:-1], answers[-1]
    assert [r.status_code for r in good] == [200] * 6, [r.text for r in good]
    assert {r.json()["prompt"] for r in good} == {BASE_ANSWER}
    assert bad_answer.status_code == bad_status, bad_answer.text


# -- 4. latents are bounded by the decoded image size -------------------------------------------------
def test_a_latent_that_decodes_above_the_pixel_limit_is_413(live_server):
    body = {"prompt": "a cat", "step": 1, "num_steps": 4, "latent_format": "sd15",
            "latent": encode_latents(torch.zeros(1, 4, 160, 160))}  # 1280 x 1280 > the server's 1024 x 1024
    with live_server.client() as c:
        r = c.post("/refine", json=body)
        assert r.status_code == 413, r.text
        assert "1280x1280" in r.json()["detail"] and "max_image_pixels" in r.json()["detail"]
        small = c.post("/refine", json={**body, "latent": encode_latents(torch.zeros(1, 4, 16, 16))})
        assert small.status_code == 200, small.text


def test_the_largest_admitted_latent_is_bounded_before_decoding(live_server):
    """A (1, 4, 2048, 2048) latent is within the element limit but would decode at 16384^2."""
    from promptloop.wire import PayloadError

    held = live_server.state.backbones.get("sd")
    with pytest.raises(PayloadError) as err:
        held.check_latents(torch.zeros(1, 4, 2048, 2048), 1, height=None, width=None, max_pixels=2048 * 2048)
    assert err.value.status == 413 and "16384x16384" in str(err.value)


# -- 5. the policy input is bounded in tokens ----------------------------------------------------------
def test_policy_input_over_the_token_bound_is_413(live_server):
    with live_server.client() as c:
        limit = c.get("/info").json()["limits"]["max_input_tokens"]
        assert limit == (2048 if live_server.backend == "vllm" else 4096) - 24
        r = c.post("/refine", json=LONG_INPUT)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "input_too_long" and f"limit {limit}" in r.json()["detail"]
        assert c.post("/refine", json=_good()).json()["prompt"] == BASE_ANSWER


def test_the_token_bound_is_a_setting(trained_dirs):
    policy_dir, adapter_dir = trained_dirs
    live = start_server(server_settings(policy_dir, adapter_dir, "unused", "transformers", backbones={},
                                        max_input_tokens=80, warmup=False))
    try:
        with live.client() as c:
            assert c.get("/info").json()["limits"]["max_input_tokens"] == 80
            r = c.post("/refine", json={"prompt": "a red fox", "step": 1, "num_steps": 4})
            assert r.status_code == 413 and "limit 80" in r.json()["detail"], r.text
            r = c.post("/plan", json={"prompts": ["a red fox"], "steps": [1, 2], "num_steps": 4})
            assert r.status_code == 413 and "limit 80" in r.json()["detail"], r.text
    finally:
        live.stop()


# -- 6. an unknown backbone is refused even when the request needs none -----------------------------
def test_unknown_backbone_is_422_even_when_unused(live_server):
    with live_server.client() as c:
        r = c.post("/refine", json=_good(backbone="sdxl-turbo"))
        assert r.status_code == 422, r.text
        assert "unknown backbone 'sdxl-turbo'" in r.json()["detail"]
        assert c.post("/refine", json=_good(backbone="sd")).status_code == 200

