"""Poison requests of issue 18 (item 5), over real HTTP: each got a 5xx, was accepted when it
should not be, or had no bound before its fix.

A batch of latents was decoded at once (memory grew with the batch), a 0-dim or float8 latent
got 500, a temperature the schema admitted got 503 (1e-45 on transformers, 5 on vLLM), a phone's
multi-picture JPEG got 415, deep JSON and 5000-digit integers got a generic message, and JSON
``NaN`` and ``"step": true`` were accepted.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import server_settings, start_server
from PIL import Image
from trained_policy import BASE_ANSWER

from promptloop.wire import decode_image, encode_image, encode_latents


def _png(size=(64, 64), color=(200, 40, 40)) -> str:
    return encode_image(Image.new("RGB", size, color))


def _good(**extra) -> dict:
    return {"prompt": "a red fox", "step": 2, "num_steps": 10, "image": _png(), **extra}


def _latent_body(latents: torch.Tensor) -> dict:
    """One item per row of ``latents``."""
    return {"items": [{"prompt": f"a cat {i}"} for i in range(latents.shape[0])], "step": 1, "num_steps": 4,
            "latent": encode_latents(latents), "latent_format": "sd15"}


def _post_raw(live, path: str, raw: bytes):
    with live.client() as c:
        return c.post(path, content=raw, headers={"Content-Type": "application/json"})


# -- 1. decoded pixels are bounded per request, and latents are decoded in slices -------------------
# A server with small limits, so that a request at the limit is cheap to decode: 128x128 per image
# (a (4, 16, 16) SD latent), 4 such images per request.
SMALL_IMAGE, SMALL_REQUEST = 128 * 128, 4 * 128 * 128


@pytest.fixture(scope="module")
def small_server(trained_dirs, sd_dir):
    policy_dir, adapter_dir = trained_dirs
    live = start_server(server_settings(policy_dir, adapter_dir, sd_dir, "transformers", warmup=False,
                                        max_image_pixels=SMALL_IMAGE, max_request_pixels=SMALL_REQUEST))
    yield live
    live.stop()


@pytest.fixture
def vae_calls(small_server):
    """The batch sizes the server's VAE is called with during a test."""
    vae = small_server.state.backbones.get("sd").pipe.vae
    calls: list[int] = []
    original = vae.decode

    def decode(z, *args, **kwargs):
        calls.append(z.shape[0])
        return original(z, *args, **kwargs)

    vae.decode = decode
    yield calls
    del vae.decode  # back to the class's method


def test_latents_at_the_request_pixel_limit_are_decoded_over_it_413(small_server, vae_calls):
    with small_server.client() as c:
        assert c.get("/info").json()["limits"]["max_request_pixels"] == SMALL_REQUEST
        at_limit = c.post("/refine", json=_latent_body(torch.randn(4, 4, 16, 16)))  # 4 x 128^2
        assert at_limit.status_code == 200, at_limit.text
        assert len(at_limit.json()["refinements"]) == 4
        assert vae_calls == [1, 1, 1, 1]  # one image at the per-image limit per slice
        vae_calls.clear()
        over = c.post("/refine", json=_latent_body(torch.randn(5, 4, 16, 16)))
        assert over.status_code == 413, over.text
        detail = over.json()["detail"]
        assert "max_request_pixels" in detail and f"{5 * SMALL_IMAGE}" in detail and f"{SMALL_REQUEST}" in detail
        assert vae_calls == []  # refused before decoding


def test_small_latents_are_decoded_several_per_slice(small_server, vae_calls):
    with small_server.client() as c:
        r = c.post("/refine", json=_latent_body(torch.randn(10, 4, 8, 8)))  # 64x64 each: 4 per slice
    assert r.status_code == 200, r.text
    assert vae_calls == [4, 4, 2]


def test_preview_images_are_bounded_per_request(small_server):
    items = [{"prompt": f"a fox {i}", "image": _png((128, 128), (i * 40, 90, 160))} for i in range(5)]
    with small_server.client() as c:
        at_limit = c.post("/refine", json={"items": items[:4], "step": 1, "num_steps": 4})
        assert at_limit.status_code == 200, at_limit.text
        over = c.post("/refine", json={"items": items, "step": 1, "num_steps": 4})
        assert over.status_code == 413, over.text
        assert "max_request_pixels" in over.json()["detail"]
        # the per-image limit still comes first, naming the image
        big = c.post("/refine", json=_good(image=_png((129, 128))))
        assert big.status_code == 413 and "image" in big.json()["detail"], big.text


def test_a_full_batch_at_the_per_image_limit_is_refused_on_each_backend(live_server):
    """64 latents each decoding to the per-image limit (1024^2 on the test servers) were admitted
    and decoded at once; now the request as a whole is bounded, before anything is decoded."""
    with live_server.client() as c:
        limit = c.get("/info").json()["limits"]["max_request_pixels"]
        batch = limit // (1024 * 1024) + 1
        r = c.post("/refine", json=_latent_body(torch.zeros(batch, 4, 128, 128)))
        assert r.status_code == 413, r.text
        assert "max_request_pixels" in r.json()["detail"]
        assert c.post("/refine", json=_good()).json()["prompt"] == BASE_ANSWER


def _serve(*args: str):
    """``promptloop serve ARGS`` in process, up to where it would start listening."""
    import typer
    from typer.testing import CliRunner

    from promptloop.server.cli import serve

    app = typer.Typer()
    app.command()(serve)
    return CliRunner().invoke(app, ["--policy", "x", "--backend", "transformers", *args])


def test_the_request_pixel_limit_is_a_setting_with_a_default():
    from promptloop.server import Settings

    assert Settings().max_request_pixels == 4 * 2048 * 2048
    result = _serve("--max-request-pixels", "0")
    assert result.exit_code == 2 and "max_request_pixels must be positive" in result.output, result.output


# -- 2. latents of no rank or of a dtype the server does not decode --------------------------------
BAD_LATENTS = {
    "0-dim": torch.tensor(1.0),
    "1-dim": torch.zeros(4),
    "5-dim": torch.zeros(1, 4, 8, 8, 1),
    "float8_e4m3fn": torch.zeros(1, 4, 8, 8).to(torch.float8_e4m3fn),
    "float8_e5m2": torch.zeros(1, 4, 8, 8).to(torch.float8_e5m2),
    "bool": torch.zeros(1, 4, 8, 8, dtype=torch.bool),
    "int64": torch.zeros(1, 4, 8, 8, dtype=torch.int64),
    "uint8": torch.zeros(1, 4, 8, 8, dtype=torch.uint8),
    "complex64": torch.zeros(1, 4, 8, 8, dtype=torch.complex64),
}


def test_latents_of_bad_rank_or_dtype_are_a_422(live_server):
    with live_server.client() as c:
        for name, latents in BAD_LATENTS.items():
            body = {"prompt": "a cat", "step": 1, "num_steps": 4, "latent": encode_latents(latents),
                    "latent_format": "sd15"}
            r = c.post("/refine", json=body)
            assert r.status_code == 422, (name, r.status_code, r.text)
            detail = r.json()["detail"]
            assert ("dtype" in detail) if name[0] in "fbuic" else ("shape" in detail), (name, detail)
        for dtype in (torch.float16, torch.bfloat16, torch.float64):  # the float types are decoded
            r = c.post("/refine", json=_latent_body(torch.zeros(1, 4, 8, 8, dtype=dtype)))
            assert r.status_code == 200, (dtype, r.text)


# -- 3. one temperature range on every backend ------------------------------------------------------
@pytest.mark.parametrize("temperature,status", [
    (0, 200), (0.01, 200), (2, 200), (1e-45, 422), (0.005, 422), (2.5, 422), (5, 422), (-1, 422),
])
def test_temperature_range_is_the_same_on_every_backend(live_server, temperature, status):
    with live_server.client() as c:
        r = c.post("/refine", json=_good(sampling={"temperature": temperature, "seed": 1, "max_new_tokens": 8}))
        assert r.status_code == status, r.text
        plan = c.post("/plan", json={"prompts": ["a cat"], "steps": [1], "num_steps": 4,
                                     "sampling": {"temperature": temperature, "max_new_tokens": 8}})
        assert plan.status_code == status, plan.text
        if status == 422:
            assert "temperature" in r.json()["detail"], r.text
        if 0 < temperature < 0.01:
            assert "0 (greedy) or between 0.01 and 2" in r.json()["detail"], r.text


def test_the_default_temperature_is_checked_at_start():
    from promptloop.server import Settings

    for bad in (1e-45, 3.0, -0.5):
        with pytest.raises(ValueError, match="temperature"):
            Settings(policy="x", backend="transformers", temperature=bad)
    Settings(policy="x", backend="transformers", temperature=2.0)
    result = _serve("--temperature", "5")
    assert result.exit_code == 2 and "temperature must be 0 (greedy) or between 0.01 and 2" in result.output


# -- 4. a phone's multi-picture JPEG (MPO) is a JPEG: its first picture is used ----------------------
def _mpo(first=(200, 30, 30), second=(20, 30, 220), size=(64, 48)) -> str:
    import base64

    buffer = io.BytesIO()
    Image.new("RGB", size, first).save(buffer, "MPO", save_all=True, append_images=[Image.new("RGB", size, second)])
    raw = buffer.getvalue()
    assert Image.open(io.BytesIO(raw)).format == "MPO"
    return base64.b64encode(raw).decode()


def test_an_mpo_decodes_to_its_first_picture():
    image = decode_image(_mpo())
    assert image.mode == "RGB" and image.size == (64, 48)
    r, _, b = image.getpixel((32, 24))
    assert r > 150 and b < 100  # the first (red) picture, not the second (blue)


def test_an_mpo_preview_is_accepted(live_server):
    with live_server.client() as c:
        r = c.post("/refine", json=_good(image=_mpo()))
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == BASE_ANSWER


# -- 5. JSON the server will not parse, and values a strict API refuses ------------------------------
def test_deep_json_and_huge_integers_get_a_clear_400(live_server):
    deep = b'{"prompt": "a cat", "step": 1, "num_steps": 4, "history": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = _post_raw(live_server, "/refine", deep)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_json" and "nested too deeply" in r.json()["detail"]
    huge = b'{"prompt": "a cat", "step": ' + b"7" * 5000 + b', "num_steps": 4}'
    r = _post_raw(live_server, "/refine", huge)
    assert r.status_code == 400, r.text
    assert "more than 4300 digits" in r.json()["detail"]
    not_utf8 = b'{"prompt": "a \xff cat", "step": 1, "num_steps": 4}'
    r = _post_raw(live_server, "/refine", not_utf8)
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"], r.text
    assert _post_raw(live_server, "/refine", b'{"prompt": "a", "step": 1, "num_steps": 4}').status_code == 200


def _refine(**raw: bytes) -> bytes:
    """A valid /refine body with the given fields replaced or added as raw JSON text."""
    fields = {"prompt": b'"a cat"', "step": b"1", "num_steps": b"4", **raw}
    return b"{" + b", ".join(b'"%s": %s' % (name.encode(), value) for name, value in fields.items()) + b"}"


# Values JSON allows but the schema must not coerce: where the 422's detail points -> raw bodies
STRICT = {
    "timestep": [_refine(timestep=b"NaN"), _refine(timestep=b"Infinity"), _refine(timestep=b"1e400")],
    "temperature": [_refine(sampling=b'{"temperature": NaN}')],
    "top_p": [_refine(sampling=b'{"top_p": NaN}')],
    "seed": [_refine(sampling=b'{"seed": "1"}')],  # a string
    "step": [_refine(step=b"true")],
    "num_steps": [_refine(num_steps=b"4.0")],
    "items.0.step": [b'{"items": [{"prompt": "a cat", "step": false}], "num_steps": 4}'],
    "return_embeddings": [_refine(return_embeddings=b'"yes"')],  # a bool as a string
    "steps": [b'{"prompts": ["a cat"], "steps": [true], "num_steps": 4}'],  # /plan
}


def test_nan_and_booleans_as_numbers_are_a_422(live_server):
    for where, bodies in STRICT.items():
        for raw in bodies:
            path = "/plan" if raw.startswith(b'{"prompts"') else "/refine"
            r = _post_raw(live_server, path, raw)
            assert r.status_code == 422, (raw, r.status_code, r.text)
            assert where in r.json()["detail"], (raw, r.json()["detail"])
    # an integral timestep is still a number
    r = _post_raw(live_server, "/refine", b'{"prompt": "a cat", "step": 1, "num_steps": 4, "timestep": 999}')
    assert r.status_code == 200, r.text


def test_the_history_limit_is_32_and_in_info(live_server):
    with live_server.client() as c:
        assert c.get("/info").json()["limits"]["max_history"] == 32
        ok = c.post("/refine", json=_good(history=["a fox"] * 32))
        assert ok.status_code == 200, ok.text
        r = c.post("/refine", json=_good(history=["a fox"] * 33))
        assert r.status_code == 422 and "33 entries, more than 32" in r.json()["detail"], r.text


def test_nan_is_not_a_latent_value_either(live_server):
    with live_server.client() as c:
        r = c.post("/refine", json=_latent_body(torch.full((1, 4, 8, 8), math.inf)))
    assert r.status_code == 422 and "NaN or infinite" in r.json()["detail"], r.text
