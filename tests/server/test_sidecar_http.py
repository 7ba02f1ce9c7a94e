"""The sidecar over real HTTP, for each backend (transformers always; vLLM where installed)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import math
import socket
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import ADMIN_KEY, API_KEY
from PIL import Image
from trained_policy import ADAPTER_ANSWER, BASE_ANSWER

from promptloop.policies.http import HTTPPolicy
from promptloop.refinement import Fallback, Observation
from promptloop.wire import decode_tensors, encode_image, encode_latents, encode_tensors


def _png(color=(200, 40, 40), size=(64, 64)) -> str:
    return encode_image(Image.new("RGB", size, color))


def _good(**extra) -> dict:
    return {"prompt": "a red fox", "step": 2, "num_steps": 10, "image": _png(), **extra}


def _assert_healthy(live) -> None:
    with live.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").status_code == 200
        r = c.post("/refine", json=_good())
        assert r.status_code == 200, r.text
        assert r.json()["prompt"] == BASE_ANSWER


# -- the hook through the sidecar equals the in-process policy ---------------------------------
def test_hook_through_sidecar_gives_the_in_process_image(live_server, tf_policy, sd_dir):
    from promptloop import PromptLoopHook
    from promptloop.backbones import load_pipeline

    pipe = load_pipeline(sd_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)

    def run(callback=None):
        kwargs = {"num_inference_steps": 6, "height": 64, "width": 64, "output_type": "np", "guidance_scale": 5.0,
                  "generator": torch.Generator().manual_seed(0)}
        if callback is not None:
            kwargs["callback_on_step_end"] = callback
        return pipe(["a red fox in the snow", "a lighthouse at dusk"], **kwargs).images

    remote = PromptLoopHook(HTTPPolicy(live_server.url, api_key=API_KEY), schedule=[1, 3])
    local = PromptLoopHook(tf_policy, schedule=[1, 3])
    remote_images, local_images, plain = run(remote), run(local), run()

    assert np.array_equal(remote_images, local_images)
    assert not np.array_equal(remote_images, plain)  # the refinements did something
    entries = remote.trace.entries
    assert len(entries) == 4 and all(e.fallback is None for e in entries), [e.error for e in entries]
    assert [e.prompt_after for e in entries] == [e.prompt_after for e in local.trace.entries]
    assert {e.prompt_after for e in entries} == {BASE_ANSWER}
    assert all(e.preview is not None for e in entries)


# -- bad input: a clear 4xx, and the server stays healthy ---------------------------------------
def _not_an_image() -> str:
    return base64.b64encode(b"this is not an image at all").decode()


def _huge_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (1500, 1500), (0, 0, 0)).save(buffer, format="PNG")  # 2.25 Mpx > the 1 Mpx limit
    return base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = {
    "malformed base64": (_good(image="not*base64!!"), 400, "malformed base64"),
    "base64 of no image": (_good(image=_not_an_image()), 400, "not a decodable"),
    "image over the pixel limit": (_good(image=_huge_png()), 413, "pixels"),
    "empty prompt": (_good(prompt="   "), 422, "must not be empty"),
    "no prompt": ({"step": 1, "num_steps": 4}, 422, "prompt"),
    "step beyond the end": (_good(step=10), 422, "not below num_steps"),
    "latent of the wrong shape": (
        {"items": [{"prompt": "a cat"}], "step": 1, "num_steps": 4,
         "latent": encode_latents(torch.randn(1, 3, 8, 8)), "latent_format": "sd15"}, 422, "4 channels"),
    "latent with the wrong batch": (
        {"items": [{"prompt": "a cat"}], "step": 1, "num_steps": 4,
         "latent": encode_latents(torch.randn(2, 4, 8, 8)), "latent_format": "sd15"}, 422, "batch size"),
    "NaN latent": (
        {"prompt": "a cat", "step": 1, "num_steps": 4,
         "latent": encode_latents(torch.full((1, 4, 8, 8), math.nan)), "latent_format": "sd15"}, 422, "NaN"),
    "latent that is not safetensors": (
        {"prompt": "a cat", "step": 1, "num_steps": 4, "latent": _not_an_image(), "latent_format": "sd15"},
        400, "safetensors"),
    "latent of an unknown format": (
        {"prompt": "a cat", "step": 1, "num_steps": 4, "latent": encode_latents(torch.zeros(1, 4, 8, 8)),
         "latent_format": "sd9"}, 422, "unknown latent format"),
    "latent format the server has no VAE for": (
        {"prompt": "a cat", "step": 1, "num_steps": 4, "latent": encode_latents(torch.zeros(1, 16, 8, 8)),
         "latent_format": "sd3"}, 422, "no backbone with latent format"),
    "unknown backbone": (_good(backbone="sdxl-turbo", return_embeddings=True), 422, "unknown backbone"),
    "unknown adapter": (_good(adapter="nope"), 422, "unknown adapter"),
    "unknown field": (_good(colour="red"), 422, "colour"),
    "too many new tokens": (_good(sampling={"max_new_tokens": 100000}), 422, "max_new_tokens"),
    "negative temperature": (_good(sampling={"temperature": -1}), 422, "temperature"),
}


def test_bad_requests_get_a_4xx_with_a_message(live_server):
    with live_server.client() as c:
        for name, (body, status, needle) in BAD_REQUESTS.items():
            r = c.post("/refine", json=body)
            assert r.status_code == status, (name, r.status_code, r.text)
            payload = r.json()
            assert payload["status"] == status and payload["error"], name
            assert needle.lower() in payload["detail"].lower(), (name, payload["detail"])
        r = c.post("/refine", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "json" in r.json()["detail"].lower()
    _assert_healthy(live_server)


def test_a_50_mb_body_is_refused_before_it_is_parsed(live_server):
    body = b'{"prompt": "' + b"x" * (50 * 2**20) + b'", "step": 0, "num_steps": 2}'
    r = httpx.post(live_server.url + "/refine", content=body, timeout=120,
                   headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 413
    assert "exceeds the limit" in r.json()["detail"]
    _assert_healthy(live_server)


def test_api_key_is_required_and_checked(live_server):
    missing = httpx.post(live_server.url + "/refine", json=_good(), timeout=60)
    assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]
    assert missing.headers.get("www-authenticate") == "Bearer"
    wrong = httpx.post(live_server.url + "/refine", json=_good(), timeout=60, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["detail"]
    assert httpx.get(live_server.url + "/info", timeout=60).status_code == 401
    ok = httpx.post(live_server.url + "/refine", json=_good(), timeout=60, headers={"X-API-Key": API_KEY})
    assert ok.status_code == 200
    # liveness, readiness, metrics and the docs stay open
    for path in ("/health", "/ready", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(live_server.url + path, timeout=60).status_code == 200, path
    _assert_healthy(live_server)


def test_a_slow_client_gets_408_and_does_not_hold_the_server(live_server):
    host, port = live_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /refine HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n\r\n{\"prompt\":")
        _assert_healthy(live_server)  # served while the slow client dawdles
        start = time.monotonic()
        answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert time.monotonic() - start < 10


# -- load -----------------------------------------------------------------------------------------
def test_32_concurrent_clients_are_all_answered(live_server):
    def one(i: int):
        policy = HTTPPolicy(live_server.url, api_key=API_KEY, timeout_s=120, retries=0)
        obs = Observation(f"prompt {i}", f"prompt {i}", i % 5, 10,
                          preview=Image.new("RGB", (48 + i, 48), (i * 7 % 256, 90, 160)))
        try:
            return policy.refine([obs])[0]
        finally:
            policy.close()

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert all(r.fallback is None for r in results), [r.error for r in results if r.fallback]
    assert {r.text for r in results} == {BASE_ANSWER}
    metrics = httpx.get(live_server.url + "/metrics", timeout=60).text
    assert 'promptloop_http_requests_total{endpoint="/refine",status="200"}' in metrics


# -- latents, embeddings, batches -----------------------------------------------------------------
def test_latents_are_decoded_by_the_server_like_the_hook_decodes_them(live_server, sd_dir, tf_policy):
    from promptloop.backbones import load_pipeline
    from promptloop.preview import VAEPreview

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    vae = load_pipeline(sd_dir, device="cpu").vae
    previews = VAEPreview(vae, size=256).decode(latents)
    observations = [Observation("a cat", "a cat", 2, 8, preview=p, sample_index=i) for i, p in enumerate(previews)]

    policy = HTTPPolicy(live_server.url, api_key=API_KEY, backbone="sd")
    via_latents = policy.refine([Observation("a cat", "a cat", 2, 8, sample_index=i) for i in range(2)],
                                latents=latents, latent_format="sd15")
    via_images = policy.refine(observations)
    local = tf_policy.refine(observations)
    assert [r.raw_text for r in via_latents] == [r.raw_text for r in via_images] == [r.raw_text for r in local]
    assert all(r.fallback is None for r in via_latents)


def test_embeddings_match_the_backbone_encoder(live_server, sd_dir):
    from promptloop.backbones import load_pipeline

    with live_server.client() as c:
        r = c.post("/refine", json={"items": [{"prompt": "a cat", "image": _png()}, {"prompt": "a dog"}],
                                    "step": 3, "num_steps": 10, "return_embeddings": True})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["backbone"] == "sd" and len(data["refinements"]) == 2
    tensors = decode_tensors(data["embeddings"])
    pipe = load_pipeline(sd_dir, device="cpu")
    expected, _ = pipe.encode_prompt([x["text"] for x in data["refinements"]], "cpu", 1, False)
    assert set(tensors) == {"prompt_embeds"}
    torch.testing.assert_close(tensors["prompt_embeds"], expected.float())

    # the client hands them out per refinement
    policy = HTTPPolicy(live_server.url, api_key=API_KEY, return_embeddings=True)
    ref = policy.refine([Observation("a cat", "a cat", 3, 10)])[0]
    torch.testing.assert_close(ref.extra["prompt_embeds"], expected[0].float())


def test_batched_requests_keep_order_and_per_item_fields(live_server):
    items = [
        {"prompt": "a cat", "image": _png((10, 10, 10)), "step": 1},
        {"prompt": "a dog", "current_prompt": "a dog, night", "history": ["a dog"], "image": _png((250, 250, 0))},
        {"prompt": "a ship"},
    ]
    with live_server.client() as c:
        r = c.post("/refine", json={"items": items, "step": 4, "num_steps": 10,
                                    "sampling": {"return_logprobs": True}})
    assert r.status_code == 200, r.text
    refs = r.json()["refinements"]
    assert len(refs) == 3 and all(x["applied"] for x in refs)
    for x in refs:
        assert len(x["token_ids"]) == len(x["logprobs"]) > 0 and all(lp <= 0 for lp in x["logprobs"])


def test_plan_endpoint_serves_ahead_mode(live_server):
    policy = HTTPPolicy(live_server.url, api_key=API_KEY)
    plans = policy.plan(["a cat", "a dog"], [2, 5], 10)
    assert len(plans) == 2 and all(len(p) == 2 for p in plans)
    assert all(r.fallback in (None, Fallback.EMPTY, Fallback.UNPARSABLE, Fallback.TOO_LONG) for p in plans for r in p)


# -- adapters -------------------------------------------------------------------------------------
def test_adapters_per_request_and_switched_by_the_admin(live_server, trained_dirs):
    _, adapter_dir = trained_dirs
    with live_server.client() as c:
        assert c.post("/refine", json=_good(adapter="oil")).json()["prompt"] == ADAPTER_ANSWER
        assert c.post("/refine", json=_good()).json()["prompt"] == BASE_ANSWER

        # the admin endpoint needs the admin key
        assert c.post("/admin/adapter", json={"name": "oil"}).status_code == 403
        assert httpx.post(live_server.url + "/admin/adapter", json={"name": "oil"}, timeout=60).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        bad = c.post("/admin/adapter", json={"name": "x", "path": "/nonexistent/adapter"}, headers=admin)
        assert bad.status_code == 422 and "adapter_config.json" in bad.json()["detail"]
        unknown = c.post("/admin/adapter", json={"name": "x"}, headers=admin)
        assert unknown.status_code == 422

        try:
            r = c.post("/admin/adapter", json={"name": "oil2", "path": str(adapter_dir)}, headers=admin)
            assert r.status_code == 200 and r.json()["adapter"] == "oil2", r.text
            assert c.post("/refine", json=_good()).json()["prompt"] == ADAPTER_ANSWER
            assert c.post("/refine", json=_good(use_base_model=True)).json()["prompt"] == BASE_ANSWER
            assert c.get("/info").json()["adapter"] == "oil2"
        finally:
            r = c.post("/admin/adapter", json={"name": None}, headers=admin)
            assert r.status_code == 200 and r.json()["adapter"] is None
        assert c.post("/refine", json=_good()).json()["prompt"] == BASE_ANSWER


# -- the client's failure handling ---------------------------------------------------------------
def test_http_policy_falls_back_instead_of_raising(live_server):
    obs = [Observation("a cat", "a cat, current", 1, 4)]
    # nothing listens there: connection errors, retried, then an ERROR fallback
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    start = time.monotonic()
    ref = HTTPPolicy(f"http://127.0.0.1:{dead_port}", retries=2, backoff_s=0.05).refine(obs)[0]
    assert ref.fallback is Fallback.ERROR and ref.text == "a cat, current" and "cannot reach" in ref.error
    assert time.monotonic() - start < 5
    # a deadline too short for any answer: TIMEOUT
    ref = HTTPPolicy(live_server.url, api_key=API_KEY, timeout_s=0.001).refine(obs)[0]
    assert ref.fallback is Fallback.TIMEOUT and ref.text == "a cat, current"
    # a client mistake (wrong key) is not retried and is reported
    ref = HTTPPolicy(live_server.url, api_key="wrong", retries=3).refine(obs)[0]
    assert ref.fallback is Fallback.ERROR and "401" in ref.error


def test_info_describes_policy_backbones_and_limits(live_server):
    with live_server.client() as c:
        info = c.get("/info").json()
    assert info["backend"] == live_server.backend and info["ready"] is True
    assert info["adapters"]["oil"].endswith("adapter-oil")
    assert info["backbones"][0]["name"] == "sd" and info["backbones"][0]["latent_format"] == "sd15"
    assert info["limits"]["max_body_bytes"] == 8 * 2**20


def test_codec_round_trips():
    image = Image.new("RGB", (17, 9), (1, 2, 3))
    from promptloop.wire import PayloadError, decode_image

    assert np.array_equal(np.asarray(decode_image(encode_image(image))), np.asarray(image))
    assert np.array_equal(np.asarray(decode_image("data:image/png;base64," + encode_image(image))), np.asarray(image))
    t = {"prompt_embeds": torch.randn(2, 3, 4)}
    torch.testing.assert_close(decode_tensors(encode_tensors(t))["prompt_embeds"], t["prompt_embeds"])
    with pytest.raises(PayloadError) as err:
        decode_image("%%%")
    assert err.value.status == 400
