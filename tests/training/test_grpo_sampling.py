"""GRPO rollouts decode with the config's sampling, passed per call: the policy's own default
sampling is neither used nor changed (training and evaluation)."""

from __future__ import annotations

import dataclasses

import pytest
from training_helpers import small_config

from promptloop.policies import SamplingConfig
from promptloop.training.grpo.trainer import GRPOTrainer


@pytest.mark.slow
def test_rollouts_use_the_config_sampling_and_leave_the_policy_unchanged(tmp_path, warm_policy_dir):
    config = small_config(tmp_path, max_steps=1, save_steps=0, temperature=0.7, top_p=0.9,
                          max_completion_length=20, eval_temperature=0.3, eval_num_prompts=1)
    trainer = GRPOTrainer(config)
    policy = trainer.rollout_policy
    default = SamplingConfig(max_new_tokens=3, temperature=0.0, top_p=1.0)
    policy.sampling = default
    seen: list[SamplingConfig | None] = []
    generate = policy.generate

    def recording_generate(conversations, *, sampling=None, **options):
        seen.append(sampling)
        return generate(conversations, sampling=sampling, **options)

    policy.generate = recording_generate  # a spy around the real generate
    metrics = trainer.train_step(0)
    trained = list(seen)
    trainer.evaluate(1)
    evaluated = seen[len(trained):]

    assert policy.sampling is default and policy.sampling == SamplingConfig(max_new_tokens=3)
    assert trained and evaluated and None not in seen
    for s in trained:
        assert (s.temperature, s.top_p, s.max_new_tokens, s.return_logprobs) == (0.7, 0.9, 20, True)
    for s in evaluated:
        assert (s.temperature, s.top_p, s.max_new_tokens) == (0.3, 0.9, 20)
    # The completions were decoded with the config's budget, not the policy's 3 tokens.
    assert metrics["train/completion_length"] > 3
    assert dataclasses.asdict(policy.sampling) == dataclasses.asdict(default)
