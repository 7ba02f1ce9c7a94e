"""The sidecar's backbone store for the other families: SDXL/SD3 pooled embeddings, FLUX packed latents."""

from __future__ import annotations

import math

import pytest
import torch

from promptloop.server.backbones import BackboneStore
from promptloop.wire import PayloadError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from promptloop.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("backbones")
    specs = {family: str(save_tiny_pipeline(family, root / family)) for family in ("sdxl", "sd3", "flux")}
    return BackboneStore.load(specs, device="cpu")


@pytest.mark.parametrize("family,pooled", [("sdxl", True), ("sd3", True), ("flux", False)])
def test_embeddings_are_the_pipelines_own(store, family, pooled):
    from promptloop.backbones import adapter_for

    held = store.get(family)
    out = held.encode(["a cat", "a dog on a beach"])
    expected = adapter_for(held.pipe).encode(held.pipe, ["a cat", "a dog on a beach"], {})
    torch.testing.assert_close(out["prompt_embeds"], expected.prompt_embeds.float())
    assert ("pooled_prompt_embeds" in out) is pooled
    if pooled:
        torch.testing.assert_close(out["pooled_prompt_embeds"], expected.pooled_prompt_embeds.float())


def test_flux_packed_latents_are_unpacked_and_decoded(store):
    held = store.get("flux")
    channels = held.latent_format.channels
    scale = getattr(held.pipe, "vae_scale_factor", 8)
    height = width = 2 * scale * 4  # a 4x4 grid of packed 2x2 patches
    packed = torch.randn(2, 16, channels * 4)
    latents = held.check_latents(packed, 2, height=height, width=width)
    assert latents.shape == (2, channels, 8, 8)
    images = held.decode(latents)
    assert len(images) == 2 and images[0].mode == "RGB"
    # square grids unpack without height/width; others need them
    assert held.check_latents(packed, 2, height=None, width=None).shape == (2, channels, 8, 8)
    with pytest.raises(PayloadError, match="height"):
        held.check_latents(torch.randn(1, 12, channels * 4), 1, height=None, width=None)
    with pytest.raises(PayloadError, match="positions"):
        held.check_latents(packed, 2, height=height * 2, width=width)
    with pytest.raises(PayloadError, match="NaN"):
        held.check_latents(torch.full((1, 16, channels * 4), math.nan), 1, height=None, width=None)


def test_backbone_resolution(store):
    assert store.resolve(None, "sd3", purpose="decoding").name == "sd3"
    with pytest.raises(PayloadError, match="several backbones"):
        store.resolve(None, None, purpose="return_embeddings")
    with pytest.raises(PayloadError, match="latent format 'flux', not 'sdxl'"):
        store.resolve("flux", "sdxl", purpose="decoding")
    with pytest.raises(PayloadError, match="no backbone with latent format 'sd15'"):
        store.resolve(None, "sd15", purpose="decoding")
