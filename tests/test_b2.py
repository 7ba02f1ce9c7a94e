"""B²-DiffuRL: stage schedule, branch sampling, selection (issue 10, item 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptloop.training.diffusion.b2 import branch_index, select_branches, split_step
from promptloop.training.diffusion.stat_tracker import StageHistory
from promptloop.training.diffusion.trajectory import encode_prompts, sample_trajectories


def test_schedule_is_the_authors_backward_progression():
    steps = [split_step(i, 100) for i in range(100)]
    assert steps == [14 + (i * 7) // 100 for i in range(100)]
    assert steps[0] == 14 and steps[-1] == 20 and steps == sorted(steps)
    # stage i reaches 14 + k from ceil(100 k / 7) on: 0, 15, 29, 43, 58, 72, 86
    assert {s: steps.count(s) for s in set(steps)} == {14: 15, 15: 14, 16: 14, 17: 15, 18: 14, 19: 14, 20: 14}
    # which steps are trained: from the branch point to the end
    assert branch_index(0, 100, 20) == 6 and branch_index(99, 100, 20) == 0
    assert [branch_index(i, 4, 10, lo=6, hi=10) for i in range(4)] == [4, 3, 2, 1]
    assert split_step(3, 3, 14, 20) == 20  # past the end stays at the last


def test_selection_keeps_exactly_what_the_thresholds_say():
    z = np.array([
        0.9, 0.1, -0.2, 0.0, -0.7,    # best 0.9 >= 0.5 kept; worst -0.7 < -0.5 kept
        0.5, 0.2, 0.1, 0.0, -0.5,     # best exactly 0.5 kept (>=); worst exactly -0.5 not (<)
        0.4, 0.3, 0.2, 0.1, 0.0,      # nothing
        -0.6, -0.9, -1.2, -0.8, -0.7,  # best -0.6 not kept; worst -1.2 kept
    ])
    assert select_branches(z, 5).tolist() == [0, 4, 5, 17]
    assert select_branches(z, 5, pos_threshold=0.35, neg_threshold=-0.95).tolist() == [0, 5, 10, 17]
    with pytest.raises(ValueError):
        select_branches(z[:7], 5)


def test_stage_history_z_scores_over_current_and_last_stages():
    h = StageHistory(history=2)
    z0 = h.update(["a", "a", "b", "b"], [1.0, 3.0, 10.0, 14.0])
    np.testing.assert_allclose(z0, [-1 / np.sqrt(2), 1 / np.sqrt(2)] * 2, rtol=1e-6)
    h.update(["a", "a"], [5.0, 7.0])
    z2 = h.update(["a"], [4.0])  # pooled: 1, 3, 5, 7 (two stages back) + 4
    pooled = np.array([1, 3, 5, 7, 4.0])
    np.testing.assert_allclose(z2, [(4 - pooled.mean()) / pooled.std(ddof=1)], rtol=1e-6)
    z3 = h.update(["a"], [4.0])  # the first stage has left the history: 5, 7, 4, 4
    pooled = np.array([5, 7, 4, 4.0])
    np.testing.assert_allclose(z3, [(4 - pooled.mean()) / pooled.std(ddof=1)], rtol=1e-6)
    again = StageHistory(history=2)
    again.load_state_dict(h.state_dict())
    np.testing.assert_allclose(again.update(["a"], [6.0]), h.update(["a"], [6.0]))


@pytest.fixture(scope="module")
def tiny_sd():
    from promptloop.testing import tiny_pipeline

    return tiny_pipeline("sd")


def test_branches_share_the_prefix_bit_for_bit_and_differ_after(tiny_sd):
    prompts = ["a red cube", "a blue ball"]
    cond = encode_prompts(tiny_sd, prompts, cfg=True)
    k, start = 3, 2
    traj = sample_trajectories(tiny_sd, prompts, cond, num_steps=5, guidance_scale=5.0, eta=1.0, seeds=[7, 8],
                               height=64, width=64, branches=k, branch_index=start,
                               branch_seeds=list(range(100, 100 + 2 * k)), decode=False)
    assert len(traj) == 6 and traj.group.tolist() == [0, 0, 0, 1, 1, 1] and traj.branch_index == start
    assert traj.prompts == ["a red cube"] * 3 + ["a blue ball"] * 3
    for g in range(2):
        sib = traj.latents[g * k:(g + 1) * k]
        for s in range(1, k):
            assert torch.equal(sib[s, :start + 1], sib[0, :start + 1])  # shared prefix, bit for bit
            assert torch.equal(traj.log_probs[g * k + s, :start], traj.log_probs[g * k, :start])
            for j in range(start + 1, 6):  # every later latent differs
                assert not torch.allclose(sib[s, j], sib[0, j])
    # the prefix is the unbranched trajectory with the same seeds
    plain = sample_trajectories(tiny_sd, prompts, cond, num_steps=5, guidance_scale=5.0, eta=1.0, seeds=[7, 8],
                                height=64, width=64, decode=False)
    assert torch.equal(plain.latents[:, :start + 1], traj.latents[::k, :start + 1])
