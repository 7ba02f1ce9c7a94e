"""DDPO (Black et al., "Training Diffusion Models with Reinforcement Learning", 2023) on a LoRA
adapter of the UNet: DDPO-SF, DDPO-IS and reward-weighted regression.

One epoch: sample trajectories with :func:`~.trajectory.sample_trajectories` (log-probs recorded
through the scheduler capture), score the final images with the reward registry, turn rewards
into advantages (:class:`~.stat_tracker.PerPromptStatTracker`, or batch statistics, or RWR
weights), then make ``num_inner_epochs`` passes over the trajectories: for each sample, a random
permutation of its steps (``timestep_fraction`` of them), the denoiser re-run with gradients (CFG
with both passes), :func:`~.ddim_logprob.ddim_step_with_logprob` on the stored next latents, and
:func:`policy_loss`. Gradients accumulate over the trained steps and ``gradient_accumulation_steps``
train batches, as in ddpo-pytorch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptloop.training.diffusion.config import DDPOConfig
from promptloop.training.diffusion.ddim_logprob import ddim_step_with_logprob
from promptloop.training.diffusion.lora import UNetLoRA
from promptloop.training.diffusion.stat_tracker import PerPromptStatTracker
from promptloop.training.diffusion.trajectory import (
    Trajectories,
    cat_trajectories,
    encode_prompts,
    predict_noise,
    sample_trajectories,
    subsample_timesteps,
)
from promptloop.training.runtime import Runtime, derived_seed

logger = logging.getLogger("promptloop.training.ddpo")


def policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, *,
                objective: str = "is", clip_range: float = 1e-4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPO's per-step loss over a batch, and its diagnostics.

    ``is``: ``mean(max(-A * r, -A * clip(r, 1 - c, 1 + c)))`` with ``r = exp(log_prob - old)``;
    ``sf`` and ``rwr``: ``mean(-A * log_prob)`` (for RWR, ``A`` holds the regression weights).
    Diagnostics: ``approx_kl = mean((log_prob - old)^2) / 2`` and ``clipfrac`` (share of ratios
    outside the clip range).
    """
    diff = log_prob - old_log_prob
    ratio = torch.exp(diff)
    if objective == "is":
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
        loss = torch.maximum(unclipped, clipped).mean()
    elif objective in ("sf", "rwr"):
        loss = -(advantages * log_prob).mean()
    else:
        raise ValueError(f"unknown objective {objective!r}")
    info = {"approx_kl": 0.5 * (diff.detach() ** 2).mean(),
            "clipfrac": ((ratio.detach() - 1.0).abs() > clip_range).float().mean()}
    return loss, info


def rwr_weights(rewards: np.ndarray, temperature: float) -> np.ndarray:
    """Reward-weighted regression weights ``N * softmax(r / temperature)`` (mean 1)."""
    z = np.asarray(rewards, dtype=np.float64) / temperature
    w = np.exp(z - z.max())
    return len(w) * w / w.sum()


class DDPOTrainer:
    """Train a LoRA adapter on the backbone's UNet with DDPO.

    Args:
        config: a :class:`DDPOConfig`.
        pipe: a diffusers pipeline to train (default: built from ``config.backbone``); its
            scheduler is replaced by a ``DDIMScheduler`` with the same configuration.
        reward: a reward callable ``(images, prompts) -> list[float]`` (default: the registry's
            ``load_reward(config.reward, config.reward_options)``).
    """

    config: DDPOConfig

    def __init__(self, config: DDPOConfig, pipe: Any = None, reward: Any = None) -> None:
        from diffusers import DDIMScheduler

        from promptloop.rewards import load_reward
        from promptloop.training.models import load_backbone, load_prompts

        config.validate()
        self.config = config
        self.runtime = Runtime(config)
        accelerator = self.runtime.accelerator
        device = self.runtime.device
        if pipe is None:
            pipe = load_backbone(config.backbone, device=device, dtype=config.dtype)
        if getattr(pipe, "unet", None) is None:
            raise NotImplementedError(f"{type(pipe).__name__}: DDPO/B2 tune UNet backbones sampled by DDIM (SD 1.x/2.x, "
                                      "SDXL); flow-matching transformers (SD3, FLUX) are not supported (docs/ddpo.md)")
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        for name in ("vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
        self.pipe = pipe
        self.model = UNetLoRA(pipe.unet, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                              target_modules=config.lora_target_modules, init_adapter=config.init_adapter)
        self.reward = reward if reward is not None else load_reward(config.reward, config.reward_options)
        self.prompts = load_prompts(config.prompts)
        self.eval_prompts = load_prompts(config.eval_prompts, heldout=True) if config.eval_steps else []
        params = self.model.lora_parameters()
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      weight_decay=config.weight_decay, eps=config.adam_epsilon)
        from transformers import get_scheduler

        self.lr_scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps,
                                          num_training_steps=max(1, config.max_steps * self._updates_per_epoch()))
        self.model, self.optimizer = accelerator.prepare(self.model, optimizer)
        self.tracker = PerPromptStatTracker(config.stat_buffer_size, config.stat_min_count)
        self.step = 0

    # -- sizes ----------------------------------------------------------------------------------
    def _updates_per_epoch(self) -> int:
        c = self.config
        batches = math.ceil(c.sample_batch_size * c.sample_num_batches_per_epoch / c.train_batch_size)
        return c.num_inner_epochs * math.ceil(batches / c.gradient_accumulation_steps)

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], **kwargs: Any) -> Trajectories:
        """Trajectories of ``prompts`` under the current adapter (one seed per prompt)."""
        c = self.config
        cond = encode_prompts(self.pipe, prompts, cfg=c.cfg, negative_prompt=c.negative_prompt, height=c.height,
                              width=c.width)
        was_training = self.pipe.unet.training
        self.pipe.unet.eval()
        try:
            return sample_trajectories(self.pipe, prompts, cond, num_steps=c.num_inference_steps,
                                       guidance_scale=c.guidance_scale, eta=c.eta, seeds=seeds,
                                       height=c.height, width=c.width, **kwargs)
        finally:
            self.pipe.unet.train(was_training)

    def score(self, traj: Trajectories) -> np.ndarray:
        return np.asarray(self.reward(traj.images, traj.prompts), dtype=np.float64)

    def collect(self, epoch: int) -> tuple[Trajectories, np.ndarray]:
        """This process's trajectories of one epoch and their rewards (seeded by run seed, epoch,
        process and batch, so a resumed run samples the same)."""
        c = self.config
        rank = self.runtime.process_index
        rng = random.Random(derived_seed(c.seed, epoch, rank, 1))
        parts, rewards = [], []
        for b in range(c.sample_num_batches_per_epoch):
            prompts = [rng.choice(self.prompts) for _ in range(c.sample_batch_size)]
            seeds = [derived_seed(c.seed, epoch, rank, b, i) for i in range(len(prompts))]
            traj = self.sample(prompts, seeds)
            parts.append(traj)
            rewards.append(self.score(traj))
        return cat_trajectories(parts), np.concatenate(rewards)

    def _gather(self, prompts: Sequence[str], rewards: np.ndarray) -> tuple[list[str], np.ndarray, slice]:
        """Prompts and rewards of all processes, and this process's slice of them."""
        n = len(rewards)
        rank, world = self.runtime.process_index, self.runtime.num_processes
        if world == 1:
            return list(prompts), rewards, slice(0, n)
        index = {p: i for i, p in enumerate(self.prompts)}
        local = torch.tensor([[index.get(p, -1), r] for p, r in zip(prompts, rewards)], dtype=torch.float64,
                             device=self.runtime.device)
        allv = self.runtime.accelerator.gather(local).cpu().numpy()
        all_prompts = [self.prompts[int(i)] if i >= 0 else f"<unknown {k}>" for k, i in enumerate(allv[:, 0])]
        return all_prompts, allv[:, 1], slice(rank * n, (rank + 1) * n)

    def advantages(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        """Advantages of this process's samples (computed over all processes' rewards)."""
        c = self.config
        all_prompts, all_rewards, mine = self._gather(prompts, rewards)
        if c.objective == "rwr":
            adv = rwr_weights(all_rewards, c.rwr_temperature)
        elif c.per_prompt_stat_tracking:
            adv = self.tracker.update(all_prompts, all_rewards)
        else:
            adv = (all_rewards - all_rewards.mean()) / (all_rewards.std() + 1e-8)
        return adv[mine]

    # -- training -------------------------------------------------------------------------------
    def update(self, traj: Trajectories, advantages: np.ndarray | torch.Tensor, *, start: int = 0) -> dict[str, float]:
        """``num_inner_epochs`` passes of DDPO updates over ``traj``, training steps ``start ..``
        of each trajectory (B² passes its branch point). Returns mean diagnostics."""
        c = self.config
        accelerator = self.runtime.accelerator
        device = self.runtime.device
        n = len(traj)
        adv = torch.as_tensor(advantages, dtype=torch.float32, device=device).clamp(-c.adv_clip_max, c.adv_clip_max)
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(c.num_inference_steps, device=device)
        sums: dict[str, float] = {"loss": 0.0, "approx_kl": 0.0, "clipfrac": 0.0, "grad_norm": 0.0}
        counts = {"micro": 0, "updates": 0}
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        for _ in range(c.num_inner_epochs):
            perm = torch.randperm(n)
            steps = subsample_timesteps(n, traj.num_steps, c.timestep_fraction, start=start)
            k = steps.shape[1]
            batches = [perm[i:i + c.train_batch_size] for i in range(0, n, c.train_batch_size)]
            for b, rows in enumerate(batches):
                cond = traj.cond.select(rows).to(device)
                last_of_group = (b + 1) % c.gradient_accumulation_steps == 0 or b == len(batches) - 1
                group_size = (b % c.gradient_accumulation_steps) + 1 if b == len(batches) - 1 else \
                    c.gradient_accumulation_steps
                for j in range(k):
                    cols = steps[rows, j]
                    latents = traj.latents[rows, cols].to(device)
                    target = traj.latents[rows, cols + 1].to(device)
                    ts = traj.timesteps[rows, cols].to(device)
                    old = traj.log_probs[rows, cols].to(device)
                    sync = last_of_group and j == k - 1
                    ctx = contextlib.nullcontext() if sync or self.runtime.num_processes == 1 else \
                        accelerator.no_sync(self.model)
                    with ctx:
                        noise = predict_noise(self.model, latents, ts, cond, c.guidance_scale)
                        out = ddim_step_with_logprob(scheduler, noise, ts, latents, eta=c.eta, prev_sample=target)
                        loss, info = policy_loss(out.log_prob, old, adv[rows.to(device)], objective=c.objective,
                                                 clip_range=c.clip_range)
                        accelerator.backward(loss / (k * group_size))
                    sums["loss"] += float(loss.detach())
                    sums["approx_kl"] += float(info["approx_kl"])
                    sums["clipfrac"] += float(info["clipfrac"])
                    counts["micro"] += 1
                if last_of_group:
                    norm = accelerator.clip_grad_norm_(params, c.max_grad_norm)
                    sums["grad_norm"] += float(norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    counts["updates"] += 1
        self.model.eval()
        out_metrics = {k: v / max(1, counts["micro"]) for k, v in sums.items() if k != "grad_norm"}
        out_metrics["grad_norm"] = sums["grad_norm"] / max(1, counts["updates"])
        out_metrics["updates"] = float(counts["updates"])
        return out_metrics

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str] | None = None, num_seeds: int | None = None) -> float:
        """Mean reward on fixed (prompt, seed) pairs under the current adapter."""
        prompts = list(prompts if prompts is not None else (self.eval_prompts or self.prompts))
        num_seeds = num_seeds or self.config.eval_num_seeds
        pairs = [(p, 10_000 + s) for p in prompts for s in range(num_seeds)]
        traj = self.sample([p for p, _ in pairs], [s for _, s in pairs])
        return float(self.score(traj).mean())

    # -- the run ----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides weights, optimiser and RNG (JSON)."""
        return {"tracker": self.tracker.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state.get("tracker", {}))

    def epoch(self, epoch: int) -> dict[str, float]:
        """Sample, score, update: one DDPO epoch. Returns its metrics."""
        t0 = time.perf_counter()
        traj, rewards = self.collect(epoch)
        t1 = time.perf_counter()
        adv = self.advantages(traj.prompts, rewards)
        metrics = self.update(traj, adv)
        t2 = time.perf_counter()
        stats = self.runtime.mean_across_processes({"reward_mean": float(rewards.mean()),
                                                    "reward_std": float(rewards.std())})
        metrics.update(stats)
        metrics.update({"samples_per_second": len(traj) / max(t1 - t0, 1e-9), "time_sampling": t1 - t0,
                        "time_training": t2 - t1, "lr": self.lr_scheduler.get_last_lr()[0]})
        return {f"train/{k}": v for k, v in metrics.items()}

    def train(self) -> Path:
        """Run ``max_steps`` epochs (resuming if asked; checkpoints every ``save_steps`` and at the
        last step); returns the final adapter folder."""
        c = self.config
        rt = self.runtime
        resume = rt.resolve_checkpoint(c.resume_from_checkpoint)
        if resume is not None:
            state = rt.load_checkpoint(resume, self.model, self.optimizer, self.lr_scheduler)
            self.step = int(state["step"])
            self.load_state(state)
            logger.info("resumed from %s at step %d", resume, self.step)
        bar = rt.progress(c.max_steps, initial=self.step, desc=type(self).__name__.replace("Trainer", ""))
        if c.eval_on_start and self.step == 0 and c.eval_steps:
            rt.log({"eval/reward_mean": self.evaluate()}, 0)
        try:
            while self.step < c.max_steps:
                metrics = self.epoch(self.step)
                self.step += 1
                if c.eval_steps and self.step % c.eval_steps == 0:
                    metrics["eval/reward_mean"] = self.evaluate()
                if self.step % max(1, c.logging_steps) == 0:
                    rt.log(metrics, self.step)
                if c.log_fingerprints:
                    rt.log_fingerprint(self.model, self.step)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics.get('train/reward_mean', float('nan')):.3f}")
                # the last step too (as GRPO), so resuming a finished run repeats no epoch
                if c.save_steps and (self.step % c.save_steps == 0 or self.step == c.max_steps):
                    rt.save_checkpoint(self.step, self.model, self.optimizer, self.lr_scheduler, self.state())
        finally:
            rt.close()
        return self.save_adapter(Path(c.output_dir) / "adapter")

    def save_adapter(self, directory: str | Path) -> Path:
        """The adapter for ``pipe.load_lora_weights(directory)`` (main process writes it)."""
        rt = self.runtime
        rt.wait()
        if rt.is_main:
            rt.accelerator.unwrap_model(self.model).save_pretrained(directory, pipeline_class=type(self.pipe))
        rt.wait()
        return Path(directory)


__all__ = ["DDPOTrainer", "policy_loss", "rwr_weights"]
