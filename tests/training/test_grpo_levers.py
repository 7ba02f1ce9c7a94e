"""GRPO's RL levers, mechanics without models: dynamic sampling's group filter and resampling,
the replay buffer, best-of-group and the RAFT loss, the per-refinement exploring wrapper, and
the config checks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from training_helpers import small_config

from promptloop.policies import SamplingConfig
from promptloop.refinement import Observation, Refinement
from promptloop.trace import Trace, TraceEntry
from promptloop.training.grpo.credit import ExploringPolicy
from promptloop.training.grpo.loss import best_of_group, raft_loss
from promptloop.training.grpo.replay import ReplayBuffer
from promptloop.training.grpo.sampling import collect_groups, fresh_prompts, has_spread, spread_groups
from promptloop.training.rollouts import ActionRecord, RolloutBatch, concat_groups
from promptloop.validation import ConfigError

G = 3
FLAT = {"flat a", "flat b", "flat c", "flat d"}  # prompts whose group always gets one reward


def _batch(prompts: list[str], r: int) -> RolloutBatch:
    """A fake rollout: G samples per prompt, rewards equal for FLAT prompts, else 0, 1, 2 (+ r)."""
    per = [p for p in prompts for _ in range(G)]
    rewards = [0.5 if p in FLAT else float(j % G + r) for j, p in enumerate(per)]
    entries = [TraceEntry(sample_index=j, step=1, num_steps=4, prompt_before=p, prompt_after=p + "!")
               for j, p in enumerate(per)]
    actions = [ActionRecord(trajectory=j, group=j // G, step=1, conversation=[], token_ids=[j], old_logprobs=[0.0])
               for j in range(len(per))]
    images = [Image.new("RGB", (2, 2), (j, 0, 0)) for j in range(len(per))]
    return RolloutBatch(per, images, Trace(list(per), entries), actions, {"r": list(rewards)}, rewards,
                        [0] * len(per), {"time/x": 1.0})


def test_spread_is_a_reward_std_at_or_above_the_tolerance():
    assert not has_spread([1.0, 1.0, 1.0], 0.0)
    assert has_spread([1.0, 1.0, 1.001], 1e-6)
    assert not has_spread([1.0, 1.0, 1.001], 0.01)
    assert spread_groups([1, 1, 1, 0, 1, 2, 5, 5, 5], 3, 1e-6) == [1]


def test_dynamic_sampling_keeps_only_groups_with_spread_and_resamples_fresh_prompts():
    pool = ["flat a", "flat b", "flat c", "flat d", "x", "y", "z", "w"]
    rolled: list[tuple[list[str], int]] = []

    def roll(prompts, r):
        rolled.append((list(prompts), r))
        return _batch(prompts, r)

    def run():
        return collect_groups(roll, ["flat a", "x", "flat b"], rewards=lambda b: b.rewards, num_generations=G,
                              tol=1e-6, max_resample_batches=5,
                              fresh=lambda r, k, seen: fresh_prompts(pool, k, 100 + r, seen))

    out = run()
    assert out.groups_kept == 3
    kept_prompts = [b.prompts[g * G] for b, kept in out.parts for g in kept]
    assert all(p not in FLAT for p in kept_prompts)
    assert kept_prompts[0] == "x" and len(set(kept_prompts)) == 3  # fresh prompts, never repeated
    assert out.images == sum(len(p) for p, _ in rolled) * G
    assert out.groups_resampled == sum(len(p) for p, r in rolled if r > 0)
    assert [r for _, r in rolled] == list(range(out.rounds))
    batch = concat_groups(out.parts, G)
    assert batch.num_trajectories == 3 * G
    assert all(has_spread(batch.rewards[g * G:(g + 1) * G], 1e-6) for g in range(3))
    # renumbered: trajectories, groups and trace entries point at the merged batch
    assert [a.trajectory for a in batch.actions] == list(range(3 * G))
    assert [a.group for a in batch.actions] == [j // G for j in range(3 * G)]
    assert [e.sample_index for e in batch.trace.entries] == list(range(3 * G))
    assert all(batch.prompts[a.trajectory] + "!" == batch.trace.entries[a.trajectory].prompt_after
               for a in batch.actions)
    assert batch.timings["time/x"] == float(out.rounds)
    # deterministic: the same rounds, the same prompts
    first = list(rolled)
    rolled.clear()
    again = run()
    assert rolled == first and [b.prompts for b, _ in again.parts] == [b.prompts for b, _ in out.parts]


def test_dynamic_sampling_stops_when_the_budget_is_spent():
    out = collect_groups(lambda p, r: _batch(p, r), ["flat a", "flat b"], rewards=lambda b: b.rewards,
                         num_generations=G, tol=1e-6, max_resample_batches=2,
                         fresh=lambda r, k, seen: ["flat c", "flat d"][:k])
    assert out.rounds == 3 and out.groups_kept == 0 and out.groups_resampled == 4
    assert concat_groups(out.parts, G).num_trajectories == 0


def test_fresh_prompts_are_fixed_by_the_seed_and_skip_seen_ones():
    pool = [f"p{i}" for i in range(10)]
    assert fresh_prompts(pool, 4, 7) == fresh_prompts(pool, 4, 7)
    assert fresh_prompts(pool, 4, 7) != fresh_prompts(pool, 4, 8)
    assert not set(fresh_prompts(pool, 5, 7, exclude=pool[:5])) & set(pool[:5])


def test_replay_buffer_keeps_wrong_prompts_and_round_trips(tmp_path):
    buffer = ReplayBuffer(capacity=3, threshold=0.5)
    buffer.update([("a", 0.1), ("b", 0.9), ("c", 0.2), ("d", 0.4), ("e", 0.0)])
    assert buffer.prompts == ["c", "d", "e"]  # b is right; a was the oldest of four
    buffer.update([("c", 0.7), ("d", 0.3)])
    assert buffer.prompts == ["e", "d"]  # c learnt, d moved to the end
    assert buffer.draw(5, 1) in (["e", "d"], ["d", "e"]) and buffer.draw(1, 3) == buffer.draw(1, 3)
    buffer.save(tmp_path / "r.json")
    other = ReplayBuffer(capacity=3, threshold=0.5)
    other.load(tmp_path / "r.json")
    assert other.prompts == buffer.prompts and other.draw(1, 9) == buffer.draw(1, 9)


def test_best_of_group_needs_a_unique_best():
    rewards = torch.tensor([0.1, 0.9, 0.2, 0.5, 0.5, 0.1, 0.3, 0.3, 0.3])
    assert best_of_group(rewards, 3) == [1]
    assert best_of_group(torch.tensor([0.1, 0.2, 0.2000001]), 3, tol=1e-3) == []
    assert best_of_group(torch.tensor([0.0, 0.2, 0.1]), 3, tol=0.05) == [1]


def test_raft_loss_is_the_mean_token_nll_of_the_targets():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]])).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, stats = raft_loss(logps, mask)
    expected = -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.25)) + torch.log(torch.tensor(0.1))) / 3
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.equal(logps.grad, -mask.float() / 3)  # padding gets no gradient
    # micro-batches add up to the full loss when given the whole batch's token count
    parts = sum(raft_loss(logps[i:i + 1].detach(), mask[i:i + 1], num_tokens=3)[0] for i in range(2))
    assert torch.allclose(parts, expected)
    with_kl, stats = raft_loss(logps.detach(), mask, ref_logps=logps.detach(), beta=0.5)
    assert torch.allclose(with_kl, expected) and stats.kl == 0.0


class _Recorder:
    """A policy that records which sampling each observation was decoded with."""

    max_prompt_chars = 77

    def __init__(self):
        self.calls: list[tuple[list[int], SamplingConfig]] = []

    def refine(self, observations, *, sampling=None, **options):
        self.calls.append(([o.sample_index for o in observations], sampling))
        return [Refinement(text=f"{o.current_prompt} t={sampling.temperature}") for o in observations]


def test_exploring_policy_samples_one_refinement_per_group_and_greedy_elsewhere():
    explore = SamplingConfig(temperature=1.0, seed=3)
    greedy = SamplingConfig(temperature=0.0, seed=3)
    inner = _Recorder()
    policy = ExploringPolicy(inner, num_generations=2, num_refinements=3, offset=1, explore=explore, greedy=greedy)
    assert policy.max_prompt_chars == 77  # delegated
    assert [policy.explored_refinement(g) for g in range(4)] == [1, 2, 0, 1]
    samples = range(6)  # 3 groups of 2
    for step in (2, 5, 7):  # three refinements, every sample due at each (a shared schedule)
        obs = [Observation("p", "p", step, 10, sample_index=i) for i in samples]
        out = policy.refine(obs, sampling=SamplingConfig(temperature=0.7))  # the loop's option is ignored
        assert len(out) == 6
        for i, ref in zip(samples, out):
            explored = (i, step) in policy.explored
            assert ref.text.endswith("t=1.0" if explored else "t=0.0")
    # group g explores its refinement (g + 1) % 3: group 0 at step 5, 1 at step 7, 2 at step 2
    assert policy.explored == {(0, 5), (1, 5), (2, 7), (3, 7), (4, 2), (5, 2)}
    for indices, sampling in inner.calls:  # a group's members decode in the same sub-call
        assert sampling in (explore, greedy)
        assert all((i ^ 1) in indices for i in indices)


def test_config_checks_the_levers(tmp_path):
    config = small_config(tmp_path, dynamic_sampling=True, replay_fraction=0.5, loss_type="raft",
                          credit="refinement", share_noise=True)
    assert config.max_resample_batches == 3 and config.replay_buffer_size == 64
    with pytest.raises(ConfigError, match="share_noise"):
        small_config(tmp_path, credit="refinement")
    with pytest.raises(ConfigError, match="sync"):
        small_config(tmp_path, credit="refinement", share_noise=True, mode="ahead")
    for bad in ({"credit": "token"}, {"loss_type": "sft"}, {"replay_fraction": 1.5}, {"max_resample_batches": -1},
                {"reward_tol": -1.0}, {"replay_buffer_size": 0}):
        with pytest.raises(ConfigError):
            small_config(tmp_path, **bad)


@pytest.mark.parametrize(("targets", "expected"), [
    ("attention+mlp", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("mlp", {"gate_proj", "up_proj", "down_proj"}),
    (["fc1", "gate_proj"], {"gate_proj"}),  # fc1 is the vision tower's MLP: never adapted
])
def test_lora_targets_cover_the_language_models_modules_only(tmp_path, tiny_policy_dir, targets, expected):
    from peft.tuners.lora import LoraLayer

    from promptloop.training.models import load_policy_model

    config = small_config(tmp_path, policy=str(tiny_policy_dir), lora_target_modules=targets)
    assert isinstance(config.lora_target_modules, list)
    model, _, _ = load_policy_model(config)
    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    layers = model.base_model.model.config.text_config.num_hidden_layers
    assert {name.rsplit(".", 1)[-1] for name in adapted} == expected
    assert len(adapted) == layers * len(expected)
    assert all("language_model" in name and "visual" not in name for name in adapted)


def test_lora_presets_expand_in_lists_and_from_set_strings(tmp_path):
    both = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert small_config(tmp_path, lora_target_modules="attention,mlp").lora_target_modules == both
    assert small_config(tmp_path, lora_target_modules=["mlp", "q_proj"]).lora_target_modules == both[4:] + ["q_proj"]
    assert small_config(tmp_path, lora_target_modules="q_proj,v_proj").lora_target_modules == ["q_proj", "v_proj"]
