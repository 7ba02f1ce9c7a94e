"""Supervised fine-tuning of the policy: answers teacher-forced after the chat the policy sees.

A batch is chat conversations (as :func:`~promptloop.policies.messages.build_messages` writes
them, preview images included) and the answers the policy should write; the loss is the mean
negative log-prob of the answer tokens, end-of-turn token included. It is taken by the library's
one teacher-forced path (:func:`promptloop.policies.scoring.completion_logprobs`), the one
:meth:`TransformersPolicy.score <promptloop.policies.transformers.TransformersPolicy.score>` gives
GRPO, so an SFT loss equals ``-score(...).mean_logprob()`` at temperature 1 (tested). Rows are
right-padded so the system prompt, common to every row, runs once per batch (about 40 % of a step
saved on the tiny policies).

Used by :mod:`promptloop.training.shapes.policy` (the ShapesWorld policy start). The tiny demo
policy's warm start (:mod:`promptloop.testing.warmup`) runs the same library functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from promptloop.policies.messages import Message
from promptloop.policies.scoring import Spans, completion_inputs, completion_logprobs

#: The end-of-turn token of Qwen's chat template, appended to every answer.
END_TOKEN = "<|im_end|>"


def answer_token_ids(processor: Any, answers: Sequence[str], end_token: str = END_TOKEN) -> list[list[int]]:
    """Token ids of each answer followed by ``end_token``, as the policy would generate them."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return [tokenizer(answer + end_token, add_special_tokens=False)["input_ids"] for answer in answers]


def build_answer_batch(processor: Any, conversations: Sequence[list[Message]], answers: Sequence[str], *,
                       end_token: str = END_TOKEN) -> tuple[dict[str, torch.Tensor], Spans]:
    """Model inputs for ``conversations`` each followed by its answer and ``end_token`` (images
    prepared with the default bounds, right padding) and the answer spans ``(start, length)``."""
    return completion_inputs(processor, conversations, answer_token_ids(processor, answers, end_token),
                             padding_side="right")


def answer_loss(model: Any, inputs: dict[str, torch.Tensor], spans: Spans, *,
                share_prefix: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of a :func:`build_answer_batch` batch
    (``share_prefix``: run the common system prompt once; same loss, about half the cost)."""
    return -completion_logprobs(model, inputs, spans, share_prefix=share_prefix).mean_logprob()
