"""GRPO with ``rollout_backend: vllm`` on CPU: a 2-step run on the tiny preset's models samples
its rollouts on a running vLLM engine, which serves the trained adapter after each update (a LoRA
re-loaded into the engine, no merging) with log-probs equal to the transformers scoring."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from training_helpers import small_config

from promptloop import Observation
from promptloop.policies import SamplingConfig
from promptloop.training.grpo.trainer import GRPOTrainer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]
OBS = Observation("a red fox in the snow", "a red fox in the snow", 1, 4)
GREEDY = SamplingConfig(max_new_tokens=24, return_logprobs=True)
SAMPLED = SamplingConfig(max_new_tokens=24, temperature=0.7, top_p=1.0, return_logprobs=True, seed=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory, warm_policy_dir):
    """One trainer with a vLLM rollout engine (the only engine of this module): the engine's
    greedy answer before training, then a 2-step run."""
    trainer = GRPOTrainer(small_config(tmp_path_factory.mktemp("grpo-vllm"), rollout_backend="vllm", max_steps=2,
                                       save_steps=0, logging_steps=1))
    try:
        conversation = [trainer.rollout_policy.messages_for(OBS)]
        before = trainer.rollout_policy.generate(conversation, sampling=GREEDY)[0]
        adapter = trainer.train()
        yield trainer, conversation, before, adapter
    finally:
        trainer.close()


def test_a_two_step_run_with_vllm_rollouts_trains(run):
    import json

    trainer, _, _, adapter = run
    assert type(trainer.rollout_policy).__name__ == "VLLMPolicy"
    lines = [json.loads(line) for line in (trainer.runtime.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["train/actions"] > 0 and m["time/rollout_policy_s"] > 0 for m in lines)
    assert (adapter / "adapter_model.safetensors").exists()


def test_the_engine_serves_the_updated_adapter(run):
    trainer, conversation, before, _ = run
    after = trainer.rollout_policy.generate(conversation, sampling=GREEDY)[0]
    assert after.logprobs != before.logprobs, "the engine still answers with the adapter it started with"


def test_engine_logprobs_equal_the_transformers_scoring_of_the_trained_adapter(run):
    trainer, conversation, _, _ = run
    sampled = trainer.rollout_policy.generate(conversation, sampling=SAMPLED)[0]
    assert sampled.token_ids and sampled.logprobs
    with torch.no_grad():
        scored = trainer.policy.score(conversation, [sampled.token_ids], temperature=SAMPLED.temperature)
    n = len(sampled.token_ids)
    torch.testing.assert_close(scored.logprobs[0, :n], torch.tensor(sampled.logprobs), atol=2e-3, rtol=0)


def test_identical_conversations_in_one_seeded_call_draw_different_samples(run):
    # The G rollouts of one prompt without a preview (oneshot, ahead) are identical conversations:
    # one seed shared by every request would give G identical completions and no advantage.
    trainer, conversation, _, _ = run
    hot = SamplingConfig(max_new_tokens=24, temperature=1.5, return_logprobs=True, seed=5)
    first, second = trainer.rollout_policy.generate(conversation * 2, sampling=hot)
    assert first.token_ids != second.token_ids
    again = trainer.rollout_policy.generate(conversation * 2, sampling=hot)
    assert [g.token_ids for g in again] == [first.token_ids, second.token_ids], "seeded calls must repeat"
