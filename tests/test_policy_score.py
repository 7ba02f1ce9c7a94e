"""TransformersPolicy.score: teacher-forced log-probs equal those recorded at sampling time."""

from __future__ import annotations

import torch
from PIL import Image

from promptloop import Observation
from promptloop.policies import SamplingConfig, TransformersPolicy


def _observations() -> list[Observation]:
    previews = [Image.new("RGB", (56, 56), (200, 40, 40)), None, Image.new("RGB", (112, 112), (10, 160, 90))]
    return [Observation("a red fox", "a red fox, snow" if i else "a red fox", step=2 + i, num_steps=10,
                        preview=p, history=["a red fox"] if i else [], sample_index=i)
            for i, p in enumerate(previews)]


def _policy(tiny_policy_dir, temperature: float) -> TransformersPolicy:
    sampling = SamplingConfig(max_new_tokens=10, temperature=temperature, seed=3, return_logprobs=True)
    return TransformersPolicy.from_pretrained(tiny_policy_dir, device="cpu", dtype="float32", sampling=sampling)


def test_scored_logprobs_equal_sampling_logprobs_with_previews(tiny_policy_dir):
    policy = _policy(tiny_policy_dir, temperature=0.7)
    observations = _observations()
    refinements = policy.refine(observations)
    completions = [r.token_ids for r in refinements]
    assert len({len(c) for c in completions}) >= 1 and all(completions)
    conversations = [policy.messages_for(o) for o in observations]
    scored = policy.score(conversations, completions)
    assert scored.logprobs.requires_grad, "score() must keep the graph for training"
    for row, ref in enumerate(refinements):
        n = len(ref.token_ids)
        assert scored.mask[row, :n].sum() == n and scored.mask[row, n:].sum() == 0
        torch.testing.assert_close(scored.logprobs[row, :n].detach(), torch.tensor(ref.logprobs),
                                   atol=2e-4, rtol=0)
    # The temperature is applied the same way: scoring at temperature 1 gives other numbers.
    other = policy.score(conversations, completions, temperature=1.0).logprobs.detach()
    assert not torch.allclose(other[0, :len(completions[0])], torch.tensor(refinements[0].logprobs), atol=1e-3)
    assert scored.entropies is not None and (scored.entropies[scored.mask.bool()] > 0).all()


def test_score_gradients_reach_the_model(tiny_policy_dir):
    policy = _policy(tiny_policy_dir, temperature=1.0)
    observations = _observations()[:2]
    refinements = policy.refine(observations)
    scored = policy.score([policy.messages_for(o) for o in observations], [r.token_ids for r in refinements])
    (scored.logprobs * scored.mask).sum().backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
