"""The DDIM log-prob step, trajectory recording and timestep subsampling (issue 10, item 1)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from promptloop.capture import SchedulerCapture
from promptloop.training.diffusion.ddim_logprob import DDIMLogProbStep, ddim_step_with_logprob
from promptloop.training.diffusion.trajectory import (
    encode_prompts,
    predict_noise,
    sample_trajectories,
    subsample_timesteps,
)


@pytest.fixture(scope="module")
def tiny_sd():
    from promptloop.testing import tiny_pipeline

    return tiny_pipeline("sd")


def _scheduler(**kw) -> DDIMScheduler:
    cfg = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
           "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
    cfg.update(kw)
    s = DDIMScheduler(**cfg)
    s.set_timesteps(10)
    return s


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_step_matches_diffusers_and_gaussian_density(prediction_type, eta):
    sched = _scheduler(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    z = torch.randn(3, 4, 8, 8, generator=g)
    for t in sched.timesteps:  # the last step uses final_alpha_cumprod
        ours = ddim_step_with_logprob(sched, eps, t, x, eta=eta, variance_noise=z)
        ref = sched.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ours.prev_sample, ref, rtol=1e-5, atol=1e-5)
        # closed form: mean over elements of log N(x'; mean, std^2)
        std = ours.std_dev_t
        dens = torch.distributions.Normal(ours.prev_sample_mean, std.expand_as(x)).log_prob(ours.prev_sample)
        torch.testing.assert_close(ours.log_prob, dens.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
        # with z ~ N(0, 1) the density is -z^2/2 - log std - log sqrt(2 pi), by hand
        by_hand = (-(z**2) / 2).mean(dim=(1, 2, 3)) - torch.log(std.flatten()) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(ours.log_prob, by_hand, rtol=1e-4, atol=1e-4)


def test_step_scores_a_given_sample_and_per_sample_timesteps():
    sched = _scheduler()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    ts = sched.timesteps[[1, 7]]
    drawn = ddim_step_with_logprob(sched, eps, ts, x, eta=1.0, generator=g)
    again = ddim_step_with_logprob(sched, eps, ts, x, eta=1.0, prev_sample=drawn.prev_sample)
    torch.testing.assert_close(again.log_prob, drawn.log_prob)
    for i in range(2):  # per-sample timesteps equal two separate steps
        one = ddim_step_with_logprob(sched, eps[i:i + 1], ts[i], x[i:i + 1], eta=1.0,
                                     prev_sample=drawn.prev_sample[i:i + 1])
        torch.testing.assert_close(one.log_prob, drawn.log_prob[i:i + 1])
    # a sample further from the mean is less likely
    far = ddim_step_with_logprob(sched, eps, ts, x, eta=1.0, prev_sample=drawn.prev_sample_mean + 3 * drawn.std_dev_t)
    near = ddim_step_with_logprob(sched, eps, ts, x, eta=1.0, prev_sample=drawn.prev_sample_mean)
    assert (far.log_prob < near.log_prob).all()
    with pytest.raises(ValueError, match="eta"):
        ddim_step_with_logprob(sched, eps, ts, x, eta=0.0)


def test_fp16_model_output_scored_in_fp32():
    sched = _scheduler()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=g).half()
    eps = torch.randn(2, 4, 8, 8, generator=g).half()
    out = ddim_step_with_logprob(sched, eps, sched.timesteps[3], x, eta=1.0, generator=g)
    assert out.prev_sample.dtype == torch.float16 and out.log_prob.dtype == torch.float32
    rescored = ddim_step_with_logprob(sched, eps, sched.timesteps[3], x, eta=1.0, prev_sample=out.prev_sample)
    torch.testing.assert_close(rescored.log_prob, out.log_prob)


def test_capture_records_log_probs_through_a_pipeline_call(tiny_sd):
    """The step function plugs into SchedulerCapture: a plain pipe() call records log-probs."""
    pipe = tiny_sd
    step = DDIMLogProbStep(eta=1.0, generator=torch.Generator().manual_seed(0))
    with SchedulerCapture(pipe.scheduler, record=True, step_fn=step) as cap:
        pipe(["a red cube"], num_inference_steps=4, height=64, width=64, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    assert len(cap.records) == 4
    for rec in cap.records:
        lp = rec.extras["log_prob"]
        assert lp.shape == (1,) and torch.isfinite(lp).all()
        again = ddim_step_with_logprob(pipe.scheduler, rec.model_output, rec.timestep, rec.sample, eta=1.0,
                                       prev_sample=rec.prev_sample)
        torch.testing.assert_close(again.log_prob, lp)


@pytest.mark.parametrize("cfg", [True, False])
def test_recorded_trajectories_rescore_exactly(tiny_sd, cfg):
    """Re-running the denoiser on the stored latents (as training does, CFG recomputed with both
    passes, or no CFG) gives back the recorded log-probs; seeds make sampling reproducible."""
    pipe = tiny_sd
    prompts = ["a red cube", "a blue ball"]
    cond = encode_prompts(pipe, prompts, cfg=cfg)
    kw = {"num_steps": 4, "guidance_scale": 5.0, "eta": 1.0, "height": 64, "width": 64}
    traj = sample_trajectories(pipe, prompts, cond, seeds=[1, 2], **kw)
    assert traj.latents.shape == (2, 5, 4, 8, 8) and traj.log_probs.shape == (2, 4)
    assert len(traj.images) == 2
    same = sample_trajectories(pipe, prompts, cond, seeds=[1, 2], **kw)
    assert torch.equal(same.latents, traj.latents)
    other = sample_trajectories(pipe, prompts, cond, seeds=[1, 3], **kw)
    assert torch.equal(other.latents[0], traj.latents[0]) and not torch.equal(other.latents[1], traj.latents[1])
    with torch.no_grad():
        for j in range(4):
            noise = predict_noise(pipe.unet, traj.latents[:, j], traj.timesteps[:, j], cond, 5.0)
            out = ddim_step_with_logprob(pipe.scheduler, noise, traj.timesteps[:, j], traj.latents[:, j], eta=1.0,
                                         prev_sample=traj.latents[:, j + 1])
            torch.testing.assert_close(out.log_prob, traj.log_probs[:, j], rtol=1e-4, atol=1e-4)
    if cfg:  # guidance matters: without it the same latents score differently
        uncond = encode_prompts(pipe, prompts, cfg=False)
        with torch.no_grad():
            noise = predict_noise(pipe.unet, traj.latents[:, 0], traj.timesteps[:, 0], uncond, 5.0)
        out = ddim_step_with_logprob(pipe.scheduler, noise, traj.timesteps[:, 0], traj.latents[:, 0], eta=1.0,
                                     prev_sample=traj.latents[:, 1])
        assert not torch.allclose(out.log_prob, traj.log_probs[:, 0], atol=1e-3)


def test_subsample_timesteps_is_a_per_sample_permutation():
    g = torch.Generator().manual_seed(0)
    idx = subsample_timesteps(64, 10, 0.5, g)
    assert idx.shape == (64, 5)
    for row in idx:
        assert len(set(row.tolist())) == 5 and row.min() >= 0 and row.max() < 10
    assert len({tuple(r.tolist()) for r in idx}) > 1  # samples differ
    full = subsample_timesteps(8, 10, 1.0, g)
    assert all(sorted(r.tolist()) == list(range(10)) for r in full)
    late = subsample_timesteps(8, 10, 1.0, g, start=6)
    assert all(sorted(r.tolist()) == [6, 7, 8, 9] for r in late)
