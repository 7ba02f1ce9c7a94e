"""What the GRPO loss compares against: the KL reference is the policy as training started (the
``init_adapter``, not the bare base model), and with several updates per batch the ratio is
taken against the log-probs recorded when the rollouts were sampled."""

from __future__ import annotations

import pytest
import torch
from training_helpers import small_config

from promptloop.training.grpo import trainer as trainer_module
from promptloop.training.grpo.trainer import GRPOTrainer
from promptloop.training.models import load_policy_model

pytestmark = pytest.mark.slow


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def init_adapter(tmp_path_factory, warm_policy_dir):
    """A LoRA adapter far from the base model (random, non-zero B matrices)."""
    path = tmp_path_factory.mktemp("init-adapter")
    model, _, _ = load_policy_model(small_config(path / "run"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(str(path / "adapter"))
    return path / "adapter"


def test_the_kl_reference_is_the_starting_adapter(tmp_path, init_adapter):
    trainer = GRPOTrainer(small_config(tmp_path, init_adapter=str(init_adapter), beta=0.1, save_steps=0,
                                       num_generations=3))
    start = _trainable(trainer.unwrapped)
    first = trainer.train_step(0)
    # One update per batch: the loss sees the policy before its update, which is the reference.
    assert first["train/actions"] > 0
    assert first["train/kl"] < 1e-6, first["train/kl"]
    moved = _trainable(trainer.unwrapped)
    assert any(not torch.equal(moved[k], start[k]) for k in start), "the step should move the adapter"
    # The reference pass swaps the starting weights in and the trained ones back, exactly.
    with trainer._reference_policy():
        inside = _trainable(trainer.unwrapped)
    assert all(torch.equal(inside[k], start[k]) for k in start)
    assert all(torch.equal(v, moved[k]) for k, v in _trainable(trainer.unwrapped).items())
    second = trainer.train_step(1)
    assert second["train/kl"] > 0


def test_the_bare_base_model_is_the_reference_of_a_fresh_adapter(tmp_path, init_adapter):
    """Against the base model the same start has a clear KL (what the old reference gave)."""
    trainer = GRPOTrainer(small_config(tmp_path, beta=0.1, save_steps=0, num_generations=3))
    assert trainer._reference_weights is None
    assert trainer.train_step(0)["train/kl"] < 1e-6
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(trainer.unwrapped, load_file(str(init_adapter / "adapter_model.safetensors")))
    assert trainer.train_step(1)["train/kl"] > 1e-3


def test_several_updates_take_the_ratio_against_the_recorded_logprobs(tmp_path, monkeypatch):
    """``num_iterations: 2``: both updates use the sampling-time log-probs (here shifted by 0.25,
    so a recomputation from the model would show)."""
    trainer = GRPOTrainer(small_config(tmp_path, num_iterations=2, save_steps=0, num_generations=3,
                                       gradient_accumulation_steps=2, per_device_prompts=2))
    rollout, recorded = trainer._rollout, []

    def shifted_rollout(*args, **kwargs):
        batch = rollout(*args, **kwargs)
        for action in batch.actions:
            action.old_logprobs = [lp - 0.25 for lp in action.old_logprobs]
            recorded.append(action.old_logprobs)
        return batch

    seen = []

    def spy(logps, old_logps, advantages, mask, **kwargs):
        seen.append((old_logps.clone(), mask.clone(), logps.detach().clone()))
        return grpo_loss(logps, old_logps, advantages, mask, **kwargs)

    grpo_loss = trainer_module.grpo_loss
    monkeypatch.setattr(trainer, "_rollout", shifted_rollout)
    monkeypatch.setattr(trainer_module, "grpo_loss", spy)
    metrics = trainer.train_step(0)
    assert metrics["train/actions"] == len(recorded) > 1
    assert len(seen) == 2 * 2  # 2 updates x 2 micro-batches
    for update in range(2):
        rows = [o[m.bool()] for old, mask, _ in seen[2 * update:2 * update + 2] for o, m in zip(old, mask)]
        assert len(rows) == len(recorded)
        for row, values in zip(rows, recorded):
            assert torch.allclose(row, torch.tensor(values, dtype=row.dtype), atol=1e-6)
    # Before the first update the model's own log-probs are the recorded ones + 0.25.
    first = torch.cat([(logps - old)[mask.bool()] for old, mask, logps in seen[:2]])
    assert torch.allclose(first, torch.full_like(first, 0.25), atol=1e-3)
