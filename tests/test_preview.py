"""x0 prediction and preview decoders."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from promptloop.capture import StepCapture, predicted_x0
from promptloop.preview import LinearPreview, VAEPreview, unpack_flux_latents


def _capture(scheduler, model_output, sample, t, *, return_dict=True):
    index = getattr(scheduler, "step_index", None)
    out = scheduler.step(model_output, t, sample, return_dict=return_dict)
    return StepCapture(model_output, t, sample, out, index)


def test_epsilon_formula_matches_ddim_pred_original_sample():
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    t = scheduler.timesteps[3]
    cap = _capture(scheduler, eps, sample, t)
    from_scheduler, source = predicted_x0(scheduler, cap)
    assert source == "scheduler"
    cap.output = (cap.output.prev_sample,)  # as if the scheduler gave no x0: compute it
    computed, source = predicted_x0(scheduler, cap)
    assert source == "epsilon"
    assert torch.allclose(computed, from_scheduler, atol=1e-5)


def test_flow_matching_x0_recovers_the_clean_sample():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 16, 8, 8, generator=gen)
    scheduler.step(noise - x0, scheduler.timesteps[0], noise)  # advance one step
    sigma = float(scheduler.sigmas[1])
    x_t = (1 - sigma) * x0 + sigma * noise
    cap = _capture(scheduler, noise - x0, x_t, scheduler.timesteps[1], return_dict=False)
    got, source = predicted_x0(scheduler, cap)
    assert source == "flow" and torch.allclose(got, x0, atol=1e-5)


def test_euler_returns_its_own_prediction_in_tuple_form():
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(5)
    sample = torch.randn(1, 4, 8, 8) * scheduler.init_noise_sigma
    cap = _capture(scheduler, torch.randn(1, 4, 8, 8), sample, scheduler.timesteps[0], return_dict=False)
    _, source = predicted_x0(scheduler, cap)
    assert source == "scheduler"


def test_unpack_flux_latents_inverts_packing():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 8, 12)
    packed = FluxPipeline._pack_latents(latents, 2, 16, 8, 12)
    assert torch.equal(unpack_flux_latents(packed, 64, 96, 8), latents)


def test_vae_and_linear_previews_agree_roughly(tiny_pipes, tmp_path):
    vae = tiny_pipes["sd"].vae
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 2, 2, generator=gen) * 2 - 1, size=(64, 64), mode="bilinear")
    latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    exact = VAEPreview(vae, size=32).decode(latents)
    linear = LinearPreview.fit(vae, size=32, cache_dir=tmp_path).decode(latents)
    assert [im.size for im in exact] == [im.size for im in linear] == [(32, 32), (32, 32)]
    cached = LinearPreview.fit(vae, size=32, cache_dir=tmp_path)
    assert list((tmp_path / "linear_preview").iterdir()), "the fitted map is cached"
    assert np.array_equal(np.asarray(cached.decode(latents)[0]), np.asarray(linear[0]))
    # The linear map must track the colour of what it previews better than a constant image would.
    target = ((images + 1) * 127.5).clamp(0, 255)
    target = torch.nn.functional.interpolate(target, size=(32, 32)).permute(0, 2, 3, 1).numpy()
    err = np.abs(np.stack([np.asarray(im, dtype=np.float32) for im in linear]) - target).mean()
    baseline = np.abs(target - target.mean()).mean()
    assert err < baseline
