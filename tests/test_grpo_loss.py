"""GRPO loss mechanics: advantages, clipping, KL, loss types, and one real update on the tiny policy."""

from __future__ import annotations

import pytest
import torch

from promptloop.training.grpo.loss import group_advantages, grpo_loss, k3_kl


def test_group_advantages_centre_and_scale_per_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    adv = group_advantages(rewards, 3, "group")
    assert torch.allclose(adv[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3)
    assert torch.equal(adv[3:], torch.zeros(3)), "a group with equal rewards has no signal"
    assert torch.allclose(group_advantages(rewards, 3, "none")[:3], torch.tensor([-1.0, 0.0, 1.0]))
    scaled_batch = group_advantages(rewards, 3, "batch")
    assert torch.allclose(scaled_batch[:3], torch.tensor([-1.0, 0.0, 1.0]) / (rewards.std() + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(rewards, 4)


def _ratio_setup(ratio: float, advantage: float):
    old = torch.log(torch.tensor([[0.2, 0.2]]))
    logps = (old + torch.log(torch.tensor(ratio))).clone().requires_grad_(True)
    return logps, old, torch.tensor([advantage]), torch.ones(1, 2)


@pytest.mark.parametrize("ratio, advantage, clipped", [
    (1.5, 1.0, True),    # above 1 + epsilon_high with a positive advantage: clipped, no gradient
    (1.2, 1.0, False),   # inside [1 - eps, 1 + eps_high]
    (0.5, -1.0, True),   # below 1 - epsilon with a negative advantage: clipped
    (0.5, 1.0, False),   # below, positive advantage: the min keeps the unclipped term
    (1.5, -1.0, False),  # above, negative advantage: unclipped term (pessimistic bound)
])
def test_ratio_is_clipped_at_epsilon_and_epsilon_high(ratio, advantage, clipped):
    logps, old, adv, mask = _ratio_setup(ratio, advantage)
    loss, stats = grpo_loss(logps, old, adv, mask, epsilon=0.2, epsilon_high=0.28, loss_type="dapo")
    loss.backward()
    if clipped:
        bound = 1.28 if advantage > 0 else 0.8
        assert loss.item() == pytest.approx(-bound * advantage)
        assert torch.all(logps.grad == 0) and stats.clip_ratio == 1.0
    else:
        assert loss.item() == pytest.approx(-ratio * advantage, rel=1e-5)
        assert torch.all(logps.grad != 0) and stats.clip_ratio == 0.0


def test_epsilon_high_defaults_to_epsilon():
    logps, old, adv, mask = _ratio_setup(1.25, 1.0)
    loss, _ = grpo_loss(logps, old, adv, mask, epsilon=0.2)
    assert loss.item() == pytest.approx(-1.2)


def test_loss_types_normalise_differently():
    logps = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1, 1, 1], [1.0, 0, 0, 0]])
    adv = torch.tensor([1.0, 1.0])
    per_token = -1.0  # ratio 1, advantage 1
    dapo, _ = grpo_loss(logps, logps, adv, mask, loss_type="dapo")
    grpo, _ = grpo_loss(logps, logps, adv, mask, loss_type="grpo")
    dr, _ = grpo_loss(logps, logps, adv, mask, loss_type="dr_grpo", max_completion_length=8)
    assert dapo.item() == pytest.approx(per_token * 5 / 5)
    assert grpo.item() == pytest.approx(per_token)  # mean of per-sequence means
    assert dr.item() == pytest.approx(per_token * 5 / (2 * 8))


def test_micro_batches_add_up_to_the_full_batch_loss():
    torch.manual_seed(0)
    logps = torch.randn(4, 5)
    old = logps + 0.1 * torch.randn(4, 5)
    mask = (torch.rand(4, 5) > 0.3).float()
    adv = torch.randn(4)
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        full, _ = grpo_loss(logps, old, adv, mask, loss_type=loss_type, max_completion_length=5)
        parts = sum(grpo_loss(logps[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], loss_type=loss_type,
                              max_completion_length=5, num_sequences=4, num_tokens=mask.sum())[0]
                    for i in (0, 2))
        assert parts.item() == pytest.approx(full.item(), rel=1e-5)


def test_k3_kl_is_zero_at_equality_and_positive_otherwise():
    a = torch.tensor([-1.0, -2.0])
    assert torch.equal(k3_kl(a, a), torch.zeros(2))
    assert (k3_kl(a, a + torch.tensor([0.3, -0.3])) > 0).all()


def test_one_update_on_the_tiny_policy_moves_logprobs_by_advantage_and_kl_appears():
    """A fixed batch: one prompt, four completions with rewards 1 > 0.5 > 0 > -1."""
    from peft import LoraConfig, get_peft_model

    from promptloop import Observation
    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.testing import build_tiny_qwen2vl

    model, processor = build_tiny_qwen2vl(seed=0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    policy = TransformersPolicy(model, processor, SamplingConfig(temperature=1.0))
    conversation = policy.messages_for(Observation("a red fox", "a red fox", 1, 10))
    tok = processor.tokenizer
    texts = ["a red fox, golden hour", "a red fox, soft light", "a red fox in snow", "fox fox fox"]
    completions = [tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]
    conversations = [conversation] * 4
    advantages = group_advantages(torch.tensor([1.0, 0.5, 0.0, -1.0]), 4)

    def sequence_logps(**kwargs):
        with torch.no_grad():
            scored = policy.score(conversations, completions, **kwargs)
        return (scored.logprobs * scored.mask).sum(1), scored

    before, scored = sequence_logps()
    with model.disable_adapter():
        _, ref = sequence_logps()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    scored = policy.score(conversations, completions)
    loss, stats = grpo_loss(scored.logprobs, scored.logprobs.detach(), advantages, scored.mask,
                            ref_logps=ref.logprobs, beta=0.1, loss_type="grpo")
    assert stats.kl == 0.0, "before any update the adapter is the identity: no KL to the reference"
    loss.backward()
    optimizer.step()
    model.eval()
    after, scored_after = sequence_logps()
    assert after[0] > before[0], "the highest-advantage completion becomes more likely"
    assert after[3] < before[3], "the lowest-advantage completion becomes less likely"
    _, stats_after = grpo_loss(scored_after.logprobs, scored_after.logprobs, advantages, scored_after.mask,
                               ref_logps=ref.logprobs, beta=0.1)
    assert stats_after.kl > 0.0
