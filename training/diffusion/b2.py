"""B²-DiffuRL (Hu et al., arXiv 2503.11240): backward progressive training with branch-based
sampling, on the DDPO-IS optimiser. Defaults follow the authors' code (hu-zijing/B2-DiffuRL).

Each stage ``i`` (``max_steps`` of them; the LoRA adapter and its optimiser carry over):

1. **Branch point** (backward progressive): ``split_step = split_step_min + floor(i *
   (split_step_max - split_step_min + 1) / stages)`` — 14 + ⌊i·7/100⌋ by default, rising from 14
   to 20 of 20 steps — and the branch point is step index ``num_inference_steps - split_step``.
   Early stages train only the last denoising steps; later ones reach back to the first.
2. **Branch sampling**: for each prompt one trajectory is sampled up to the branch point, then
   ``num_branches`` (5) branches continue it with independent DDIM (eta 1) noise.
3. **Selection**: rewards are z-scored per prompt over this stage and the last
   ``history_stages`` (8) stages; in each branch group the best sibling is kept if its z-score is
   ``>= pos_threshold`` (0.5) and the worst if it is ``< neg_threshold`` (-0.5).
4. **Training**: the kept samples train only the steps from the branch point on, with advantage
   ``clip(z, ±adv_clip_max) * (pos_weight if z > 0 else neg_weight)`` (±5, weights 1), PPO clip
   ``clip_range`` 0.1, ``num_inner_epochs`` (2) passes, no KL term.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from promptloop.training.diffusion.config import B2Config
from promptloop.training.diffusion.ddpo import DDPOTrainer
from promptloop.training.diffusion.stat_tracker import StageHistory
from promptloop.training.diffusion.trajectory import Trajectories, cat_trajectories
from promptloop.training.runtime import derived_seed


def split_step(stage: int, stages: int, lo: int = 14, hi: int = 20) -> int:
    """Steps trained at ``stage`` (0-based) of ``stages``: ``lo + floor(stage * (hi - lo + 1) / stages)``,
    at most ``hi`` (the authors' ``run_process.sh``)."""
    if stages < 1 or not 0 <= stage:
        raise ValueError("need stages >= 1 and stage >= 0")
    return min(hi, lo + (stage * (hi - lo + 1)) // stages)


def branch_index(stage: int, stages: int, num_steps: int, lo: int = 14, hi: int = 20) -> int:
    """The step index where branches split (and training starts) at ``stage``."""
    return num_steps - split_step(stage, stages, lo, hi)


def select_branches(z: np.ndarray | torch.Tensor, num_branches: int, pos_threshold: float = 0.5,
                    neg_threshold: float = -0.5) -> np.ndarray:
    """Indices kept from consecutive groups of ``num_branches`` siblings: per group, the best if
    its z-score is ``>= pos_threshold``, then the worst if its z-score is ``< neg_threshold``."""
    z = np.asarray(z, dtype=np.float64)
    if len(z) % num_branches:
        raise ValueError(f"{len(z)} scores do not form groups of {num_branches}")
    keep: list[int] = []
    for g, scores in enumerate(z.reshape(-1, num_branches)):
        best, worst = int(scores.argmax()), int(scores.argmin())
        if scores[best] >= pos_threshold:
            keep.append(g * num_branches + best)
        if scores[worst] < neg_threshold:
            keep.append(g * num_branches + worst)
    return np.asarray(keep, dtype=np.int64)


class B2Trainer(DDPOTrainer):
    """Train a LoRA adapter on the UNet with B²-DiffuRL (see the module docstring)."""

    config: B2Config

    def __init__(self, config: B2Config, pipe: Any = None, reward: Any = None) -> None:
        super().__init__(config, pipe=pipe, reward=reward)
        self.history = StageHistory(config.history_stages)

    def _updates_per_epoch(self) -> int:  # selection decides; a bound for the LR schedule
        return super()._updates_per_epoch() * self.config.num_branches

    def plan(self, stage: int) -> tuple[int, int]:
        """``(split_step, branch_index)`` of ``stage``."""
        c = self.config
        stages = c.schedule_stages or c.max_steps
        s = split_step(stage, stages, c.split_step_min, c.split_step_max)
        return s, c.num_inference_steps - s

    def collect(self, epoch: int) -> tuple[Trajectories, np.ndarray]:
        c = self.config
        rank = self.runtime.process_index
        _, start = self.plan(epoch)
        rng = np.random.default_rng(derived_seed(c.seed, epoch, rank, 1))
        parts, rewards = [], []
        for b in range(c.sample_num_batches_per_epoch):
            prompts = [self.prompts[int(i)] for i in rng.integers(0, len(self.prompts), c.sample_batch_size)]
            seeds = [derived_seed(c.seed, epoch, rank, b, i) for i in range(len(prompts))]
            branch_seeds = [derived_seed(c.seed, epoch, rank, b, i, k + 1)
                            for i in range(len(prompts)) for k in range(c.num_branches)]
            traj = self.sample(prompts, seeds, branches=c.num_branches, branch_index=start,
                               branch_seeds=branch_seeds)
            parts.append(traj)
            rewards.append(self.score(traj))
        return cat_trajectories(parts), np.concatenate(rewards)

    def advantages(self, prompts, rewards) -> np.ndarray:
        """Per-prompt z-scores over this stage and the history (all processes' rewards)."""
        all_prompts, all_rewards, mine = self._gather(prompts, rewards)
        return self.history.update(all_prompts, all_rewards)[mine]

    def state(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state.get("history", {}))

    def pad_selection(self, keep: np.ndarray) -> np.ndarray:
        """``keep`` padded to the largest kept count over processes (index 0 repeated; the trainer
        gives those rows advantage 0, so they add no gradient).

        Selection keeps a different number of samples on each process, but DDP's gradient
        all-reduce needs every process to run the same number of backward passes and optimiser
        steps: without this, processes deadlock or drift apart. One process: ``keep`` as it is.
        """
        if self.runtime.num_processes == 1:
            return keep
        count = torch.tensor([len(keep)], dtype=torch.int64, device=self.runtime.device)
        most = int(self.runtime.accelerator.gather(count).max())
        return np.concatenate([keep, np.zeros(most - len(keep), dtype=np.int64)])

    def epoch(self, epoch: int) -> dict[str, float]:
        """One stage: branch-sample, select, train the steps from the branch point on."""
        c = self.config
        split, start = self.plan(epoch)
        t0 = time.perf_counter()
        traj, rewards = self.collect(epoch)
        t1 = time.perf_counter()
        z = self.advantages(traj.prompts, rewards)
        keep = select_branches(z, c.num_branches, c.pos_threshold, c.neg_threshold)
        metrics: dict[str, float] = {}
        rows = self.pad_selection(keep)
        if len(rows):
            zk = torch.as_tensor(z[rows], dtype=torch.float32)
            weights = torch.where(zk > 0, torch.tensor(c.pos_weight), torch.tensor(c.neg_weight))
            adv = zk.clamp(-c.adv_clip_max, c.adv_clip_max) * weights
            adv[len(keep):] = 0.0  # padding rows: no gradient
            metrics = self.update(traj.select(rows), adv, start=start)
        t2 = time.perf_counter()
        metrics.update(self.runtime.mean_across_processes({"reward_mean": float(rewards.mean()),
                                                           "reward_std": float(rewards.std())}))
        metrics.update({
            "split_step": float(split), "branch_index": float(start),
            "trained_steps": float(c.num_inference_steps - start),
            "kept": float(len(keep)), "kept_positive": float((z[keep] > 0).sum()) if len(keep) else 0.0,
            "samples_per_second": len(traj) / max(t1 - t0, 1e-9), "time_sampling": t1 - t0,
            "time_training": t2 - t1, "lr": self.lr_scheduler.get_last_lr()[0],
        })
        return {f"train/{k}": v for k, v in metrics.items()}


__all__ = ["B2Trainer", "branch_index", "select_branches", "split_step"]
