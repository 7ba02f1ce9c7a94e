"""DDPO on SDXL: the trajectory recorder reproduces ``StableDiffusionXLPipeline.__call__`` (pooled
embeddings and time ids in ``added_cond_kwargs``), and one DDPO epoch writes an adapter that a
plain SDXL pipeline loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from promptloop.training.diffusion.ddim_logprob import ddim_step_with_logprob
from promptloop.training.diffusion.trajectory import encode_prompts, predict_noise, sample_trajectories

PROMPTS = ["a red cube", "a blue ball"]


def _ddim_sdxl():
    from promptloop.testing import tiny_pipeline

    pipe = tiny_pipeline("sdxl")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def tiny_sdxl():
    return _ddim_sdxl()


@pytest.mark.parametrize("cfg", [True, False])
def test_recorded_sdxl_trajectory_equals_a_pipeline_call(tiny_sdxl, cfg):
    pipe = tiny_sdxl
    scale = 5.0 if cfg else 1.0  # the pipeline turns CFG off at guidance 1
    cond = encode_prompts(pipe, PROMPTS, cfg=cfg, height=64, width=64)
    assert cond.added_cond_kwargs is not None and cond.added_cond_kwargs["time_ids"].shape == (2, 6)
    assert (cond.negative_added_cond_kwargs is not None) == cfg
    traj = sample_trajectories(pipe, PROMPTS, cond, num_steps=4, guidance_scale=scale, eta=1.0, seeds=[1, 2],
                               height=64, width=64, decode=False)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=scale, eta=1.0, height=64, width=64,
               generator=gens, output_type="latent").images
    torch.testing.assert_close(traj.latents[:, -1], ref, rtol=1e-4, atol=1e-4)
    # training's denoiser call on the stored latents gives back the recorded log-probs
    with torch.no_grad():
        for j in range(4):
            noise = predict_noise(pipe.unet, traj.latents[:, j], traj.timesteps[:, j], traj.cond, scale)
            out = ddim_step_with_logprob(pipe.scheduler, noise, traj.timesteps[:, j], traj.latents[:, j], eta=1.0,
                                         prev_sample=traj.latents[:, j + 1])
            torch.testing.assert_close(out.log_prob, traj.log_probs[:, j], rtol=1e-4, atol=1e-4)
    # the time ids condition the UNet: another target size gives other latents
    other = encode_prompts(pipe, PROMPTS, cfg=cfg, height=128, width=128)
    moved = sample_trajectories(pipe, PROMPTS, other, num_steps=4, guidance_scale=scale, eta=1.0, seeds=[1, 2],
                                height=64, width=64, decode=False)
    assert not torch.allclose(moved.latents[:, -1], ref, atol=1e-3)


def test_one_ddpo_epoch_on_sdxl_writes_an_adapter_a_plain_pipeline_loads(tmp_path):
    from promptloop.testing import tiny_pipeline
    from promptloop.training.config import load_config
    from promptloop.training.diffusion.config import DDPOConfig
    from promptloop.training.diffusion.ddpo import DDPOTrainer

    torch.set_num_threads(1)
    cfg = load_config(DDPOConfig, None, [
        f"output_dir={tmp_path}", "backbone=tiny:sdxl", "device=cpu", "report_to=tensorboard", "progress=false",
        "eval_steps=0", "max_steps=1", "save_steps=0", "num_inference_steps=3", "sample_batch_size=4",
        "sample_num_batches_per_epoch=1", "train_batch_size=2", "per_prompt_stat_tracking=false",
        "learning_rate=3e-2", "clip_range=0.2", "height=64", "width=64"])
    trainer = DDPOTrainer(cfg)
    adapter = trainer.train()
    assert (adapter / "pytorch_lora_weights.safetensors").exists()
    kwargs = {"num_inference_steps": 4, "height": 64, "width": 64, "guidance_scale": 5.0, "output_type": "np"}
    plain = tiny_pipeline("sdxl")(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs).images
    tuned = tiny_pipeline("sdxl")
    tuned.load_lora_weights(str(adapter))
    tuned_images = tuned(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert not np.allclose(plain, tuned_images, atol=1e-4), "the adapter should change the image"
    # the trainer's UNet (adapter in place) and the loaded adapter give the same image
    trainer.pipe.scheduler = tuned.scheduler
    again = trainer.pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_allclose(again, tuned_images, atol=1e-5)


def test_flow_matching_backbones_are_refused_clearly(tmp_path):
    from promptloop.training.config import load_config
    from promptloop.training.diffusion.config import DDPOConfig
    from promptloop.training.diffusion.ddpo import DDPOTrainer

    cfg = load_config(DDPOConfig, None, [f"output_dir={tmp_path}", "backbone=tiny:sd3", "device=cpu",
                                         "report_to=tensorboard", "progress=false", "eval_steps=0"])
    with pytest.raises(NotImplementedError, match="SD3, FLUX"):
        DDPOTrainer(cfg)


def test_b2_branches_carry_the_sdxl_conditioning(tiny_sdxl):
    """B² branching repeats the pooled embeddings and time ids with the prompt embeddings: the
    branches share their prefix bit for bit, and rescoring after the branch point (each sibling
    with its own copy of the conditioning) gives back the recorded log-probs."""
    pipe = tiny_sdxl
    cond = encode_prompts(pipe, PROMPTS, cfg=True, height=64, width=64)
    traj = sample_trajectories(pipe, PROMPTS, cond, num_steps=3, guidance_scale=5.0, eta=1.0, seeds=[1, 2],
                               height=64, width=64, branches=2, branch_index=1, branch_seeds=[5, 6, 7, 8],
                               decode=False)
    assert traj.cond.added_cond_kwargs["text_embeds"].shape[0] == 4
    assert torch.equal(traj.latents[0, :2], traj.latents[1, :2]) and not torch.equal(traj.latents[0, 2:],
                                                                                      traj.latents[1, 2:])
    with torch.no_grad():
        noise = predict_noise(pipe.unet, traj.latents[:, 1], traj.timesteps[:, 1], traj.cond, 5.0)
    out = ddim_step_with_logprob(pipe.scheduler, noise, traj.timesteps[:, 1], traj.latents[:, 1], eta=1.0,
                                 prev_sample=traj.latents[:, 2])
    torch.testing.assert_close(out.log_prob, traj.log_probs[:, 1], rtol=1e-4, atol=1e-4)
