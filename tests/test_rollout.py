"""promptloop.rollout: the one sampling path and its noise convention, shared by GRPO's rollouts,
``promptloop eval`` and the ShapesWorld evaluation; what the trace records for training."""

from __future__ import annotations

import pytest
import torch
from helpers import suffix_policy

from promptloop.evaluation import EvalRow, EvalSettings
from promptloop.evaluation.cells import image_seed as cells_image_seed
from promptloop.evaluation.cells import sample_batch
from promptloop.loop import RefineLoop
from promptloop.policies.messages import PLAN_SYSTEM_PROMPT, SYSTEM_PROMPT, build_messages
from promptloop.refinement import Observation, Refinement
from promptloop.rewards import load_reward
from promptloop.rollout import NOISE_STRIDE, image_seed, sample
from promptloop.trace import Trace, TraceEntry
from promptloop.training.rollouts import rollout
from promptloop.worlds.shapes.evaluation import generate

PROMPTS = ["a red fox", "a blue boat"]


@pytest.fixture
def starting_latents(tiny_pipes):
    """The SD pipe, with every call's starting latents (one row per image) recorded."""
    pipe = tiny_pipes["sd"]
    calls: list[torch.Tensor] = []
    original = pipe.prepare_latents

    def recording(*args, **kwargs):
        latents = original(*args, **kwargs)
        calls.append(latents.detach().clone())
        return latents

    pipe.prepare_latents = recording
    yield pipe, calls
    del pipe.prepare_latents


def test_image_seed_is_the_evaluations_convention_and_zero_seed_is_the_index():
    assert cells_image_seed is image_seed and NOISE_STRIDE == 100003
    assert [image_seed(0, i) for i in range(3)] == [0, 1, 2]  # ShapesWorld's recorded seed-0 figures
    assert image_seed(2, 5) == 2 * 100003 + 5
    assert 0 <= image_seed(2**63 - 1, 7) < 2**64  # a trainer's 63-bit seeds still seed a generator


def test_same_prompt_and_image_seed_start_from_the_same_latents_in_training_evaluation_and_shapes(
        starting_latents):
    pipe, calls = starting_latents
    seed, g = 3, 2
    per_sample = [p for p in PROMPTS for _ in range(g)]
    common = {"num_inference_steps": 2, "height": 64, "width": 64}
    reward = load_reward("jpeg_compressibility")
    policy = suffix_policy()

    rollout(pipe, policy, PROMPTS, reward, num_generations=g, schedule="evenly:1", seed=seed, **common)
    training = calls.pop()
    rollout(pipe, policy, PROMPTS, reward, num_generations=g, schedule="evenly:1", seed=seed, share_noise=True,
            **common)
    shared = calls.pop()
    settings = EvalSettings(prompts=per_sample, seeds=[seed], rewards=["jpeg_compressibility"],
                            num_inference_steps=2, height=64, width=64)
    sample_batch(pipe, policy, EvalRow("c", "tiny:sd", policy="x", schedule="evenly:1"), settings, per_sample,
                 [image_seed(seed, j) for j in range(len(per_sample))])
    evaluation = calls.pop()
    generate(pipe, per_sample, seed=seed, steps=2, batch_size=3)  # two batches: 3 + 1 images
    shapes = torch.cat([calls.pop(0), calls.pop(0)])
    sample(pipe, per_sample[2:3], [image_seed(seed, 2)], num_inference_steps=2, height=64, width=64)
    single = calls.pop()

    assert not calls
    torch.testing.assert_close(training, evaluation, rtol=0, atol=0)
    torch.testing.assert_close(shapes, evaluation, rtol=0, atol=0)
    torch.testing.assert_close(single[0], evaluation[2], rtol=0, atol=0)  # whatever the batch around it
    expected = torch.stack([torch.randn(training.shape[1:], generator=torch.Generator().manual_seed(image_seed(seed, j)))
                            for j in range(len(per_sample))]) * pipe.scheduler.init_noise_sigma
    torch.testing.assert_close(training, expected, rtol=0, atol=0)
    # share_noise: the G samples of prompt k start from image_seed(seed, k), the others' noise.
    torch.testing.assert_close(shared, evaluation[[0, 0, 1, 1]], rtol=0, atol=0)
    assert not torch.equal(training[0], training[1])


def test_sample_without_a_policy_is_the_backbone_alone(tiny_pipes):
    pipe = tiny_pipes["sd"]
    images, trace = sample(pipe, PROMPTS, [4, 9], num_inference_steps=2, height=64, width=64)
    direct = pipe(PROMPTS, num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                  generator=[torch.Generator().manual_seed(s) for s in (4, 9)]).images
    assert [im.tobytes() for im in images] == [im.tobytes() for im in direct]
    assert trace.entries == [] and trace.final_prompts() == PROMPTS and trace.meta["mode"] == "none"
    with pytest.raises(ValueError, match="one per image"):
        sample(pipe, PROMPTS, [4], num_inference_steps=2)


def test_trace_generations_count_a_plan_once():
    def entry(sample, step, plan_index=None):
        return TraceEntry(sample, step, 8, "p", "q", plan_index=plan_index, token_ids=[1, 2])

    trace = Trace(["p", "p"], [entry(1, 5), entry(0, 2, 0), entry(0, 5, 1), entry(0, 7, 2), entry(1, 2)])
    assert [(e.sample_index, e.step) for e in trace.generations()] == [(0, 2), (1, 2), (1, 5)]


class _Recorder:
    """A generative-looking policy: reports its messages and sampling options with each answer."""

    def __init__(self) -> None:
        self.options: list[dict] = []

    def refine(self, observations, **options):
        self.options.append(options)
        return [Refinement(text=o.current_prompt + " x", token_ids=[1], logprobs=[-0.1],
                           extra={"messages": build_messages(o, system_prompt="custom")}) for o in observations]


def test_the_loop_records_the_messages_the_policy_reported_and_passes_its_options():
    policy = _Recorder()
    loop = RefineLoop(policy, [0], policy_options={"sampling": "S"})
    loop.start(["a cat"], 3)
    loop.at_step(0)
    trace = loop.finish()
    entry = trace.entries[0]
    assert policy.options == [{"sampling": "S"}]
    assert entry.system_prompt == "custom" and entry.messages[0]["content"][0]["text"] == "custom"
    assert "Current prompt: a cat" in entry.messages[1]["content"][-1]["text"]
    assert "messages" not in entry.to_dict() and trace.meta["policy_calls"] == 1 and trace.meta["policy_s"] >= 0


def test_generative_policies_report_their_exact_conversation_and_training_uses_it(tiny_policy):
    from promptloop.policies import SamplingConfig
    from promptloop.training.rollouts import actions_from_trace

    options = {"sampling": SamplingConfig(max_new_tokens=8, return_logprobs=True)}
    tiny_policy.system_prompt = "Rewrite the prompt."
    try:
        loop = RefineLoop(tiny_policy, [0, 1], mode="ahead", keep_previews=False, policy_options=options)
        loop.start(["a red fox"], 4)
        for step in range(4):
            loop.at_step(step)
        plan = loop.finish()
        loop = RefineLoop(tiny_policy, [0], keep_previews=False, policy_options=options)
        loop.start(["a red fox"], 3)
        loop.at_step(0, previews=[None])
        refine = loop.finish()
    finally:
        tiny_policy.system_prompt = None
    # ahead: the planning conversation (the plan's own system prompt), on every line, one action
    assert [e.system_prompt for e in plan.entries] == [PLAN_SYSTEM_PROMPT] * 2
    assert plan.entries[0].messages == tiny_policy.plan_messages_for(["a red fox"], [0, 1], 4)[0]
    assert plan.entries[1].messages is plan.entries[0].messages
    actions = actions_from_trace(plan, 1)
    assert len(actions) == 1 and actions[0].conversation is plan.entries[0].messages
    # refine: the policy's own system prompt and the observation it saw
    entry = refine.entries[0]
    assert entry.system_prompt == "Rewrite the prompt." != SYSTEM_PROMPT
    assert entry.messages == build_messages(Observation("a red fox", "a red fox", 0, 3), system_prompt="Rewrite the prompt.")
    assert actions_from_trace(refine, 1)[0].conversation is entry.messages


def test_the_loop_does_not_recheck_what_the_parser_passed(monkeypatch):
    import promptloop.loop as loop_module

    checked: list[object] = []

    def counting(text, **kwargs):
        checked.append(text)

    monkeypatch.setattr(loop_module, "prompt_problem", counting)
    loop = RefineLoop(suffix_policy(), [0, 1])  # StaticPolicy: parse_refinement checked its answers
    loop.start(["a cat"], 4)
    assert loop.at_step(0) == {0: "a cat, oil painting"}
    assert checked == []
    loop = RefineLoop(suffix_policy(), [0], max_prompt_chars=10)  # a stricter limit than the parser's
    loop.start(["a cat"], 4)
    loop.at_step(0)
    assert checked == ["a cat, oil painting"]


def test_an_ahead_plan_written_before_sampling_counts_as_a_policy_call(tiny_pipes):
    """The hook writes the plan when the pipeline asks for its tensor inputs (RefineLoop.prepare);
    the run's trace still counts that call and its time."""
    _, trace = sample(tiny_pipes["sd"], PROMPTS, [0, 1], policy=suffix_policy(), schedule=[1, 2], mode="ahead",
                      num_inference_steps=4, height=64, width=64)
    assert trace.meta["policy_calls"] == 1 and trace.meta["policy_s"] >= 0
    assert len(trace.generations()) == 2 and len(trace.entries) == 4
