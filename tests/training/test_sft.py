"""Supervised fine-tuning takes its log-probs where GRPO does: TransformersPolicy.score's path."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from promptloop import Observation
from promptloop.policies import TransformersPolicy
from promptloop.policies.scoring import completion_inputs, completion_logprobs
from promptloop.testing.policy import build_tiny_qwen2vl
from promptloop.training.sft import END_TOKEN, answer_loss, answer_token_ids, build_answer_batch

ANSWERS = ["a red fox, golden hour", "a red fox in the snow", "a red fox, snow, soft light, cinematic", "fox"]


def _observations() -> list[Observation]:
    previews = [Image.new("RGB", (56, 56), (200, 40, 40)), None, Image.new("RGB", (112, 112), (10, 160, 90)), None]
    return [Observation("a red fox", "a red fox, snow" if i else "a red fox", step=2 + i, num_steps=10,
                        preview=p, history=["a red fox"] if i else []) for i, p in enumerate(previews)]


@pytest.fixture(scope="module")
def policy() -> TransformersPolicy:
    model, processor = build_tiny_qwen2vl(seed=1)
    return TransformersPolicy(model, processor)


def test_answer_batch_puts_each_answer_right_after_its_prompt(policy):
    conversations = [policy.messages_for(o) for o in _observations()]
    inputs, spans = build_answer_batch(policy.processor, conversations, ANSWERS)
    tokenizer = policy.tokenizer
    assert inputs["image_grid_thw"].shape[0] == 2
    for row, (answer, (start, n)) in enumerate(zip(ANSWERS, spans)):
        length = int(inputs["attention_mask"][row].sum())
        assert start + n == length and inputs["attention_mask"][row, length:].sum() == 0  # right padding
        assert tokenizer.decode(inputs["input_ids"][row, start:length]) == answer + END_TOKEN
        assert tokenizer.decode(inputs["input_ids"][row, :start]).endswith("<|im_start|>assistant\n")
        assert (inputs["mm_token_type_ids"][row, start:] == 0).all()
    # every row begins with the same system prompt (what share_prefix runs once)
    assert (inputs["input_ids"][:, :20] == inputs["input_ids"][:1, :20]).all()
    # the policy's layout: prompts left-padded as for generation, every completion in one column
    left, left_spans = completion_inputs(policy.processor, conversations, answer_token_ids(policy.processor, ANSWERS))
    width = left["input_ids"].shape[1] - max(n for _, n in spans)
    assert [s for s, _ in left_spans] == [width] * len(ANSWERS) and [n for _, n in left_spans] == [n for _, n in spans]
    for row, (start, n) in enumerate(spans):
        assert torch.equal(left["input_ids"][row, width:width + n], inputs["input_ids"][row, start:start + n])


@pytest.mark.parametrize("share_prefix", [True, False])
def test_sft_loss_is_minus_the_mean_log_prob_that_score_gives(policy, share_prefix):
    conversations = [policy.messages_for(o) for o in _observations()]
    scored = policy.score(conversations, answer_token_ids(policy.processor, ANSWERS), temperature=1.0)
    inputs, spans = build_answer_batch(policy.processor, conversations, ANSWERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sharing the prefix must work on the tiny Qwen2-VL, not fall back
        loss = answer_loss(policy.model, inputs, spans, share_prefix=share_prefix)
        tokens = completion_logprobs(policy.model, inputs, spans, share_prefix=share_prefix)
    torch.testing.assert_close(loss, -scored.mean_logprob(), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.logprobs, scored.logprobs, atol=1e-5, rtol=0)
    assert torch.equal(tokens.mask, scored.mask)
    assert scored.mask.sum(dim=1).tolist() == [n for _, n in spans]
    # and the model's own loss with labels on the answer tokens only
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, (start, n) in enumerate(spans):
        labels[row, start:start + n] = inputs["input_ids"][row, start:start + n]
    with torch.no_grad():
        torch.testing.assert_close(loss.detach(), policy.model(**inputs, labels=labels).loss, atol=1e-5, rtol=0)


def test_shared_prefix_gives_the_plain_gradients_also_under_peft(policy):
    from peft import LoraConfig, get_peft_model

    model, processor = build_tiny_qwen2vl(seed=2)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    conversations = [policy.messages_for(o) for o in _observations()]
    inputs, spans = build_answer_batch(processor, conversations, ANSWERS)
    grads = []
    for share_prefix in (True, False):
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            answer_loss(model, inputs, spans, share_prefix=share_prefix).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and all("lora" in n for n in grads[0])
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4)


def test_empty_completions_score_to_empty_tensors(policy):
    conversations = [policy.messages_for(o) for o in _observations()[:2]]
    scored = policy.score(conversations, [[], []])
    assert scored.logprobs.shape == scored.mask.shape == (2, 0)

