"""Training's prompt encoding goes through the library's family adapters and gives, bit for bit,
what the pipeline's own ``encode_prompt`` gives with classifier-free guidance (the inputs of
``pipe(prompt, negative_prompt=...)``)."""

from __future__ import annotations

import pytest
import torch

from promptloop.testing import tiny_pipeline
from promptloop.training.diffusion.trajectory import encode_prompts

PROMPTS = ["a red cube", "a blue ball", "x"]


@pytest.fixture(scope="module")
def pipes():
    return {family: tiny_pipeline(family) for family in ("sd", "sdxl")}


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_sd_conditioning_is_the_pipelines_encode_prompt(pipes, negative):
    pipe = pipes["sd"]
    embeds, neg = pipe.encode_prompt(PROMPTS, pipe.device, 1, True, negative_prompt=[negative] * 3)
    cond = encode_prompts(pipe, PROMPTS, cfg=True, negative_prompt=negative)
    assert torch.equal(cond.prompt_embeds, embeds) and torch.equal(cond.negative_prompt_embeds, neg)
    assert cond.added_cond_kwargs is None and cond.negative_added_cond_kwargs is None
    plain = encode_prompts(pipe, PROMPTS, cfg=False)
    assert torch.equal(plain.prompt_embeds, embeds) and not plain.cfg


@pytest.mark.parametrize(("negative", "force_zeros"), [("", True), ("", False), ("blurry", True)])
def test_sdxl_conditioning_is_the_pipelines_encode_prompt(pipes, negative, force_zeros):
    pipe = pipes["sdxl"]
    saved = pipe.config.force_zeros_for_empty_prompt
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    try:
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            PROMPTS, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=[negative] * 3 if negative else None)
        cond = encode_prompts(pipe, PROMPTS, cfg=True, negative_prompt=negative, height=64, width=96)
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=saved)
    assert torch.equal(cond.prompt_embeds, embeds) and torch.equal(cond.negative_prompt_embeds, neg)
    assert torch.equal(cond.added_cond_kwargs["text_embeds"], pooled)
    assert torch.equal(cond.negative_added_cond_kwargs["text_embeds"], neg_pooled)
    assert (not neg.any()) == (force_zeros and not negative)
    time_ids = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]]).repeat(3, 1)
    assert torch.equal(cond.added_cond_kwargs["time_ids"], time_ids)
    assert torch.equal(cond.negative_added_cond_kwargs["time_ids"], time_ids)


def test_a_backbone_without_a_unet_is_refused():
    pipe = tiny_pipeline("sd3")
    with pytest.raises(ValueError, match="UNet backbone"):
        encode_prompts(pipe, PROMPTS, cfg=False)
