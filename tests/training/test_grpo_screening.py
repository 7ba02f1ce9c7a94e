"""Offline difficulty filtering (``screen_prompts``): the starting policy is rolled out once per
screened prompt, greedily at the evaluation schedule; the run trains only on the prompts it got
wrong, and a resumed run reads the screening instead of repeating it."""

from __future__ import annotations

import json

import pytest
from training_helpers import small_config

from promptloop.rewards.registry import CombinedReward
from promptloop.training.grpo.screening import SCREEN_FILE, Screening, screen
from promptloop.training.grpo.trainer import GRPOTrainer
from promptloop.training.models import load_prompts
from promptloop.validation import ConfigError

TINY = load_prompts("tiny")
HARD = set(TINY[1:10:3])  # 3 of the first 10 tiny prompts


def test_screen_keeps_the_prompts_below_the_threshold_in_order(tmp_path):
    calls = []

    def rewards(batch, start):
        calls.append((list(batch), start))
        return [0.2 if p in HARD else 0.95 for p in batch]

    result = screen(TINY[:10], rewards, threshold=0.5, batch_size=4)
    assert [start for _, start in calls] == [0, 4, 8] and [p for b, _ in calls for p in b] == TINY[:10]
    assert result.kept == [p for p in TINY[:10] if p in HARD] and len(result.kept) == 3
    result.save(tmp_path / "s.json")
    again = Screening.load(tmp_path / "s.json")
    assert again == result and again.kept == result.kept
    with pytest.raises(ValueError, match="3 values for 4 prompts"):
        screen(TINY[:4], lambda batch, start: [0.0] * 3, threshold=0.5)


class HardReward(CombinedReward):
    """0.2 for the HARD prompts, 0.95 for the rest, whatever the image (one reward a prompt)."""

    def __init__(self) -> None:
        self.weights = {"fake": 1.0}
        self.rewards = {}

    def terms(self, images, prompts, metadata=None):
        return {"fake": [0.2 if p in HARD else 0.95 for p in prompts]}


@pytest.mark.slow
def test_trainer_trains_only_on_screened_prompts_and_resumes_without_rescreening(tmp_path, warm_policy_dir):
    kwargs = {"max_steps": 2, "save_steps": 1, "per_device_prompts": 2, "screen_prompts": 10,
              "screen_threshold": 0.5, "fallback_penalty": 0.0}
    trainer = GRPOTrainer(small_config(tmp_path / "run", **kwargs), reward=HardReward())
    screened = []
    rollout = trainer._rollout

    def spy(prompts, seed, **kw):
        if kw["num_generations"] == 1:
            screened.append((list(prompts), kw["schedule"], kw["temperature"]))
        return rollout(prompts, seed, **kw)

    trainer._rollout = spy
    used = []
    step_prompts = trainer.step_prompts
    trainer.step_prompts = lambda step: used.append(step_prompts(step)) or used[-1]
    trainer.train()
    assert [p for batch, _, _ in screened for p in batch] == TINY[:10]  # the first 10, once each
    assert {(s, t) for _, s, t in screened} == {("evenly:1", 0.0)}  # greedy, at the eval schedule
    saved = json.loads((tmp_path / "run" / SCREEN_FILE).read_text())
    assert [r["prompt"] for r in saved["prompts"] if r["kept"]] == [p for p in TINY[:10] if p in HARD]
    assert trainer.train_prompts == [p for p in TINY[:10] if p in HARD]
    assert len(used) == 2 and all(p in HARD for step in used for p in step)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    screen_row = next(r for r in logged if "screen/kept" in r)
    assert screen_row["screen/kept"] == 3 and screen_row["screen/prompts"] == 10

    resumed = GRPOTrainer(small_config(tmp_path / "run", **{**kwargs, "max_steps": 3}, resume_from_checkpoint="latest"),
                          reward=HardReward())
    rolled = []
    resumed_rollout = resumed._rollout
    resumed._rollout = lambda prompts, seed, **kw: rolled.append(kw["num_generations"]) or resumed_rollout(
        prompts, seed, **kw)
    resumed.train()
    assert resumed.step == 3 and 1 not in rolled  # read the screening, did not roll it out again
    assert resumed.train_prompts == trainer.train_prompts

    # the same folder at another threshold: the saved rewards are re-filtered, nothing rolled out
    stricter = GRPOTrainer(small_config(tmp_path / "run", **{**kwargs, "screen_threshold": 0.1}), reward=HardReward())
    stricter._rollout = lambda *a, **kw: pytest.fail("rolled out again")
    with pytest.raises(ValueError, match="raise screen_threshold"):
        stricter.screened_prompts()
    looser = GRPOTrainer(small_config(tmp_path / "run", **{**kwargs, "screen_threshold": 1.0}), reward=HardReward())
    looser._rollout = lambda *a, **kw: pytest.fail("rolled out again")
    assert looser.screened_prompts() == TINY[:10]
    # other prompts screened (a longer list): screened again
    more = GRPOTrainer(small_config(tmp_path / "run", **{**kwargs, "screen_prompts": 12}), reward=HardReward())
    assert more.screened_prompts() == [p for p in TINY[:12] if p in HARD]
    assert len(json.loads((tmp_path / "run" / SCREEN_FILE).read_text())["prompts"]) == 12


@pytest.mark.slow
def test_screening_that_keeps_nothing_says_what_to_change(tmp_path, warm_policy_dir):
    trainer = GRPOTrainer(small_config(tmp_path, max_steps=1, screen_prompts=2, screen_threshold=0.1,
                                       fallback_penalty=0.0), reward=HardReward())
    with pytest.raises(ValueError, match="raise screen_threshold or screen more prompts"):
        trainer.train()


def test_screen_prompts_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="screen_prompts"):
        small_config(tmp_path, screen_prompts=-1).validate(inputs=False)
