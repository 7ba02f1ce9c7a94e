"""``B2Config`` changes inherited defaults with ``inherited_defaults``: the fields keep the
parent's types and places, YAML/``--set`` loading sees them, and a typo is an error."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from promptloop.training.config import inherited_defaults, load_config
from promptloop.training.diffusion.config import B2Config, DDPOConfig


def test_b2_defaults_override_ddpo_fields_in_place():
    ddpo, b2 = DDPOConfig(), B2Config()
    assert (b2.output_dir, b2.num_inference_steps, b2.sample_num_batches_per_epoch, b2.train_batch_size) == (
        "runs/b2", 20, 32, 2)
    assert (b2.gradient_accumulation_steps, b2.num_inner_epochs, b2.clip_range, b2.learning_rate) == (64, 2, 0.1, 1e-4)
    assert b2.weight_decay == 1e-4 and b2.per_prompt_stat_tracking is False
    assert (ddpo.num_inference_steps, ddpo.clip_range, ddpo.per_prompt_stat_tracking) == (50, 1e-4, True)
    names = [f.name for f in dataclasses.fields(B2Config)]
    assert names[: len(dataclasses.fields(DDPOConfig))] == [f.name for f in dataclasses.fields(DDPOConfig)]
    hints, parent = typing.get_type_hints(B2Config), typing.get_type_hints(DDPOConfig)
    assert all(hints[name] == parent[name] for name in parent)


def test_overridden_fields_load_from_set_with_their_types():
    config = load_config(B2Config, None, ["num_inference_steps=30", "clip_range=1", "per_prompt_stat_tracking=true"])
    assert config.num_inference_steps == 30 and config.clip_range == 1.0 and isinstance(config.clip_range, float)
    assert config.per_prompt_stat_tracking is True


def test_a_name_that_is_not_inherited_is_an_error():
    with pytest.raises(TypeError, match="not an inherited dataclass field"):
        @dataclasses.dataclass
        @inherited_defaults(num_inference_step=20)
        class Typo(DDPOConfig):
            pass
