"""GRPO's RL levers inside the trainer, on tiny models: dynamic sampling trains only on groups with
a reward spread (deterministically), the replay buffer resumes exactly, RAFT trains only each
group's best rollout on its mean token NLL, and credit per refinement gives a group identical
latents up to its explored refinement and trains only that refinement."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import small_config

from promptloop.rewards import get_reward
from promptloop.rewards.registry import CombinedReward
from promptloop.training.grpo.loss import best_of_group
from promptloop.training.grpo.sampling import has_spread
from promptloop.training.grpo.trainer import GRPOTrainer
from promptloop.training.models import load_prompts

pytestmark = pytest.mark.slow


FLAT = set(load_prompts("tiny")[::2])  # 8 of the 15 tiny prompts


def _flat(prompt: str) -> bool:
    return prompt in FLAT


class FlatReward(CombinedReward):
    """JPEG compressibility, except a constant for the 'flat' prompts (their groups have no spread)."""

    def __init__(self) -> None:
        self.weights = {"fake": 1.0}
        self.rewards = {}
        self.jpeg = get_reward("jpeg_compressibility")

    def terms(self, images, prompts, metadata=None):
        scores = self.jpeg(images, prompts, metadata)
        return {"fake": [0.25 if _flat(p) else float(s) for p, s in zip(prompts, scores)]}


def _spy(trainer):
    """Record the trained batch (``collect``) and each scoring with gradients (``_score``)."""
    seen = {"batches": [], "scored": []}
    collect, score = trainer.collect, trainer._score

    def spy_collect(step):
        out = collect(step)
        seen["batches"].append(out[0])
        return out

    def spy_score(actions, *, model=None, grad=True):
        out = score(actions, model=model, grad=grad)
        if grad:
            seen["scored"].append((list(actions), out.logprobs.detach().clone(), out.mask.detach().clone()))
        return out

    trainer.collect, trainer._score = spy_collect, spy_score
    return seen


def test_dynamic_sampling_updates_on_groups_with_spread_only(tmp_path, warm_policy_dir):
    config = small_config(tmp_path, max_steps=1, save_steps=0, dynamic_sampling=True, per_device_prompts=2,
                          max_resample_batches=6, fallback_penalty=0.0)  # a penalty would give a flat group a spread
    trainer = GRPOTrainer(config, reward=FlatReward())
    step = next(s for s in range(20) if all(_flat(p) for p in trainer.prompts_for_step(s)))
    first, _, first_metrics = trainer.collect(step)  # deterministic in (seed, step): the same again below
    seen = _spy(trainer)
    metrics = trainer.train_step(step)
    batch = seen["batches"][0]
    g = config.num_generations
    assert batch.num_trajectories == 2 * g and not any(_flat(p) for p in batch.prompts)
    assert all(has_spread(batch.rewards[k:k + g], 1e-6) for k in range(0, batch.num_trajectories, g))
    assert metrics["train/groups_kept"] == 2 and metrics["train/groups_resampled"] >= 2
    assert metrics["train/images"] == g * (2 + metrics["train/groups_resampled"])
    scored = [a for actions, _, _ in seen["scored"] for a in actions]
    assert scored and {id(a) for a in scored} == {id(a) for a in batch.actions}
    assert first.prompts == batch.prompts and first.rewards == batch.rewards
    assert first_metrics["train/images"] == metrics["train/images"]


def test_replay_buffer_feeds_wrong_prompts_back_and_resumes_exactly(tmp_path, warm_policy_dir):
    kwargs = {"max_steps": 2, "save_steps": 1, "replay_fraction": 0.5, "replay_threshold": 10.0,
              "per_device_prompts": 2}
    trainer = GRPOTrainer(small_config(tmp_path / "run", **kwargs))
    used: dict[int, list[str]] = {}
    step_prompts = trainer.step_prompts

    def spy(step):
        used[step] = step_prompts(step)
        return used[step]

    trainer.step_prompts = spy
    trainer.train()
    assert used[0] == trainer.prompts_for_step(0)  # the buffer starts empty
    assert used[1][0] in used[0] and used[1][1:] == [p for p in trainer.prompts_for_step(1) if p != used[1][0]][:1]
    saved = json.loads((tmp_path / "run" / "checkpoint-1" / "replay_0.json").read_text())
    assert saved["prompts"] == used[0]  # both below the threshold, in order

    resumed = GRPOTrainer(small_config(tmp_path / "resumed", **kwargs))
    resumed.resume(tmp_path / "run" / "checkpoint-1")
    assert resumed.replay.prompts == saved["prompts"] and resumed.step == 1
    assert resumed.step_prompts(1) == used[1]


def test_raft_trains_the_best_rollout_of_each_group_on_its_mean_token_nll(tmp_path, warm_policy_dir):
    config = small_config(tmp_path, max_steps=1, save_steps=0, loss_type="raft", per_device_prompts=3,
                          num_generations=3, fallback_penalty=0.0)
    trainer = GRPOTrainer(config, reward=FlatReward())
    step = next(s for s in range(20) if 0 < sum(map(_flat, trainer.prompts_for_step(s))) < 3)
    seen = _spy(trainer)
    metrics = trainer.train_step(step)
    batch = seen["batches"][0]
    best = best_of_group(torch.tensor(batch.penalised_rewards(config.fallback_penalty)), 3, config.reward_tol)
    assert best and all(not _flat(batch.prompts[j]) for j in best)  # flat groups are ties: no target
    actions, logps, mask = seen["scored"][0]
    assert {a.trajectory for a in actions} == set(best)
    assert sorted(id(a) for a in actions) == sorted(id(a) for a in batch.actions if a.trajectory in best)
    nll = float(-(logps * mask).sum() / mask.sum())
    assert metrics["train/loss"] == pytest.approx(nll, rel=1e-5)
    # the teacher-forced log-probs are those recorded at sampling
    recorded = torch.zeros_like(logps)
    for row, a in enumerate(actions):
        recorded[row, :len(a.old_logprobs)] = torch.tensor(a.old_logprobs)
    assert torch.allclose(logps * mask, recorded * mask, atol=1e-4)


def test_credit_per_refinement_shares_latents_up_to_the_explored_refinement(tmp_path, warm_policy_dir):
    g = 3
    config = small_config(tmp_path, max_steps=1, save_steps=0, credit="refinement", share_noise=True,
                          schedule="random:2", num_inference_steps=6, per_device_prompts=2, num_generations=g)
    trainer = GRPOTrainer(config)
    scheduler = trainer.pipeline.scheduler
    latents: list[torch.Tensor] = []  # the latents entering each denoising step
    step_fn = scheduler.step

    def spy_step(model_output, timestep, sample, *args, **kwargs):
        latents.append(sample.detach().clone())
        return step_fn(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = spy_step
    step = 1
    seen = _spy(trainer)
    metrics = trainer.train_step(step)
    scheduler.step = step_fn
    batch = seen["batches"][0]
    assert len(latents) == 6 and metrics["train/actions"] == 2 * g
    assert sorted(id(a) for actions, _, _ in seen["scored"] for a in actions) == sorted(id(a) for a in batch.actions)
    steps = batch.trace.meta["sample_steps"]
    explored_texts = []
    for group in range(2):
        rows = list(range(group * g, (group + 1) * g))
        assert all(steps[j] == steps[rows[0]] for j in rows)
        explored = steps[rows[0]][(group + step) % 2]
        # after the explored step's denoising, before its refinement takes effect: bit-identical
        for t in range(explored + 2):
            assert all(torch.equal(latents[t][rows[0]], latents[t][j]) for j in rows[1:]), (group, t)
        # only the explored refinement is an action, one per member
        acts = [a for a in batch.actions if a.trajectory in rows]
        assert sorted((a.trajectory, a.step) for a in acts) == [(j, explored) for j in rows]
        entries = [e for e in batch.trace.entries if e.sample_index in rows]
        for s in steps[rows[0]]:
            texts = [e.prompt_after for e in entries if e.step == s]
            if s < explored:
                assert len(set(texts)) == 1  # the greedy prefix
            elif s == explored:
                explored_texts.append(texts)
    assert any(len(set(texts)) > 1 for texts in explored_texts), "exploration should sample different rewrites"
