"""DDPO: loss, advantages, one update on a fixed batch, the adapter in a plain pipeline,
exact resume (issue 10, item 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptloop.training.config import load_config
from promptloop.training.diffusion.config import B2Config, DDPOConfig
from promptloop.training.diffusion.ddpo import DDPOTrainer, policy_loss, rwr_weights
from promptloop.training.diffusion.stat_tracker import PerPromptStatTracker

TINY = ["device=cpu", "num_inference_steps=3", "sample_batch_size=4", "sample_num_batches_per_epoch=1",
        "train_batch_size=2", "report_to=none", "progress=false", "save_steps=0", "eval_steps=0",
        "per_prompt_stat_tracking=false", "lora_r=4", "lora_alpha=8"]


def _config(tmp_path, *extra: str, cls=DDPOConfig):
    return load_config(cls, None, [f"output_dir={tmp_path}", *TINY, *extra])


def test_is_loss_clips_the_ratio_and_sf_follows_the_advantage():
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    lp = torch.tensor([0.5, -0.5, 0.5, -0.5], requires_grad=True)
    loss, info = policy_loss(lp, old, adv, objective="is", clip_range=0.2)
    r = torch.exp(lp.detach())
    expected = torch.stack([-torch.clamp(r[0], max=1.2), -r[1], r[2], torch.clamp(r[3], min=0.8)]).mean()
    torch.testing.assert_close(loss.detach(), expected)
    assert info["clipfrac"] == 1.0
    loss.backward()  # clipped terms carry no gradient: samples 0 and 3
    assert lp.grad[0] == 0 and lp.grad[3] == 0 and lp.grad[1] < 0 and lp.grad[2] > 0
    lp2 = torch.zeros(4, requires_grad=True)
    sf, _ = policy_loss(lp2, old, adv, objective="sf")
    sf.backward()
    torch.testing.assert_close(lp2.grad, -adv / 4)  # descent raises log p where A > 0
    w = rwr_weights(np.array([0.0, 1.0, 2.0]), temperature=1.0)
    np.testing.assert_allclose(w, 3 * np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum())


def test_per_prompt_tracker_buffer_min_count_and_fallback():
    t = PerPromptStatTracker(buffer_size=4, min_count=3)
    batch = np.array([1.0, 2.0, 10.0, 20.0])
    adv = t.update(["a", "a", "b", "b"], batch)  # 2 < min_count: batch statistics
    np.testing.assert_allclose(adv, (batch - batch.mean()) / (batch.std() + 1e-6))
    adv = t.update(["a", "b"], [3.0, 30.0])  # 3 each now: per-prompt statistics
    np.testing.assert_allclose(adv, [(3 - 2) / (np.std([1, 2, 3]) + 1e-6), (30 - 20) / (np.std([10, 20, 30]) + 1e-6)])
    t.update(["a", "a"], [4.0, 5.0])  # buffer keeps the last 4: 2, 3, 4, 5
    assert list(t.stats["a"]) == [2.0, 3.0, 4.0, 5.0]
    copy = PerPromptStatTracker(buffer_size=4, min_count=3)
    copy.load_state_dict(t.state_dict())
    np.testing.assert_allclose(copy.update(["a"], [9.0]), t.update(["a"], [9.0]))


def test_configs_validate_and_presets_load():
    with pytest.raises(ValueError, match="eta"):
        load_config(DDPOConfig, None, ["eta=0"])
    with pytest.raises(ValueError, match="on-policy"):
        load_config(DDPOConfig, None, ["objective=sf", "num_inner_epochs=2"])
    with pytest.raises(ValueError, match="objective"):
        load_config(B2Config, None, ["objective=sf"])
    b2 = load_config(B2Config, None, [])
    assert (b2.split_step_min, b2.split_step_max, b2.num_branches, b2.history_stages, b2.clip_range,
            b2.adv_clip_max, b2.max_steps, b2.num_inference_steps) == (14, 20, 5, 8, 0.1, 5.0, 100, 20)
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "training" / "configs"
    for name, cls in [("ddpo_tiny", DDPOConfig), ("ddpo_sd15", DDPOConfig), ("ddpo_sdxl", DDPOConfig),
                      ("b2_tiny", B2Config), ("b2_sd15", B2Config)]:
        load_config(cls, root / f"{name}.yaml")


@pytest.fixture(scope="module")
def tiny_sd_factory():
    from promptloop.testing import tiny_pipeline

    return lambda: tiny_pipeline("sd")


@pytest.mark.parametrize("objective", ["is", "sf"])
def test_one_update_moves_log_probs_toward_the_advantages(tmp_path, tiny_sd_factory, objective):
    torch.set_num_threads(1)
    cfg = _config(tmp_path, f"objective={objective}", "learning_rate=1e-4", "clip_range=0.5",
                  "train_batch_size=4", "max_grad_norm=100")
    trainer = DDPOTrainer(cfg, pipe=tiny_sd_factory())
    traj = trainer.sample(["a red cube"] * 4, [1, 2, 3, 4], decode=False)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])

    def rescore() -> torch.Tensor:
        from promptloop.training.diffusion.ddim_logprob import ddim_step_with_logprob
        from promptloop.training.diffusion.trajectory import predict_noise

        out = []
        with torch.no_grad():
            for j in range(traj.num_steps):
                noise = predict_noise(trainer.pipe.unet, traj.latents[:, j], traj.timesteps[:, j], traj.cond, 5.0)
                out.append(ddim_step_with_logprob(trainer.pipe.scheduler, noise, traj.timesteps[:, j],
                                                  traj.latents[:, j], prev_sample=traj.latents[:, j + 1]).log_prob)
        return torch.stack(out, 1)

    before = rescore()
    torch.testing.assert_close(before, traj.log_probs, rtol=1e-4, atol=1e-4)  # ratio 1 before the update
    metrics = trainer.update(traj, adv)
    assert metrics["updates"] == 1
    delta = (rescore() - before).sum(1)
    assert (delta[:2] > 0).all() and (delta[2:] < 0).all(), delta
