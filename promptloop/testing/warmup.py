"""Warm-start the tiny Qwen2-VL policy so that it writes valid refinements.

:func:`~promptloop.testing.policy.build_tiny_qwen2vl` has random weights: its greedy output never
ends with ``<|im_end|>``, so every refinement falls back. :func:`warm_start` fine-tunes it for a
few hundred steps (tens of seconds on a CPU) on a synthetic task built in code: given the chat
messages the policy really sees (:func:`~promptloop.policies.messages.build_messages`, preview
image included), answer with the current prompt followed by ``", "`` and the first style phrase
of :data:`STYLE_WORDS` that it does not contain yet, then ``<|im_end|>``. Refining repeatedly thus
grows ``"a red fox in the snow"`` into ``"a red fox in the snow, golden hour"``, then
``"..., golden hour, soft light"``, and so on: demos and benchmarks show the loop working.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from promptloop.policies.messages import build_messages
from promptloop.refinement import Observation

from .prompts import TINY_PROMPTS

#: Style phrases the warm policy appends, in order of preference.
STYLE_WORDS: tuple[str, ...] = (
    "golden hour",
    "soft light",
    "highly detailed",
    "cinematic",
    "oil painting",
    "watercolor",
    "sharp focus",
    "dramatic lighting",
)

_END = "<|im_end|>"
_PREVIEW_SIZES = (56, 112, 128)


def next_style_word(prompt: str) -> str | None:
    """The first phrase of :data:`STYLE_WORDS` not already in ``prompt`` (None when all are)."""
    lowered = prompt.lower()
    return next((w for w in STYLE_WORDS if w not in lowered), None)


def warm_target(obs: Observation) -> str:
    """The answer the warm policy is trained to give for ``obs`` (without the end token)."""
    word = next_style_word(obs.current_prompt)
    return obs.current_prompt if word is None else f"{obs.current_prompt}, {word}"


def random_preview(rng: random.Random, size: int | None = None) -> Image.Image:
    """A small solid or two-colour gradient RGB image, like a blurry early preview."""
    size = size or rng.choice(_PREVIEW_SIZES)
    a = torch.tensor([rng.randrange(256) for _ in range(3)], dtype=torch.float32)
    b = a if rng.random() < 0.5 else torch.tensor([rng.randrange(256) for _ in range(3)], dtype=torch.float32)
    t = torch.linspace(0.0, 1.0, size)[:, None, None]  # vertical gradient
    rows = a * (1 - t) + b * t  # (size, 1, 3)
    pixels = rows.expand(size, size, 3).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def random_observation(rng: random.Random, *, preview: bool | None = None) -> Observation:
    """An observation like the loop produces: a tiny prompt with 0-2 earlier style phrases added."""
    original = rng.choice(TINY_PROMPTS)
    history: list[str] = []
    current = original
    for word in rng.sample(STYLE_WORDS, rng.choice((0, 0, 1, 1, 2))):
        if word in current:
            continue
        history.append(current)
        current = f"{current}, {word}"
    num_steps = rng.choice((4, 8, 10, 20, 25, 30, 50))
    step = rng.randrange(num_steps)
    if preview is None:
        preview = rng.random() < 0.75
    return Observation(
        original_prompt=original,
        current_prompt=current,
        step=step,
        num_steps=num_steps,
        preview=random_preview(rng) if preview else None,
        history=history,
    )


def _vision_inputs(conversations: list[list[dict[str, Any]]]) -> list[Image.Image] | None:
    # Same image handling as TransformersPolicy (qwen-vl-utils resizing) so training matches inference.
    from qwen_vl_utils import process_vision_info

    images, _videos = process_vision_info(conversations)
    return images or None


def build_batch(processor: Any, observations: list[Observation]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tokenize ``observations`` followed by their target answers, exactly as the policy sees them.

    Left-padded like :class:`~promptloop.policies.transformers.TransformersPolicy` does at inference,
    so every answer ends at the last position. Returns the model inputs and ``targets`` of shape
    ``(batch, k)``: the last ``k`` input ids where they belong to an answer (end token included),
    ``-100`` elsewhere.
    """
    tokenizer = processor.tokenizer
    conversations = [build_messages(obs) for obs in observations]
    prompts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    answers = [warm_target(obs) + _END for obs in observations]
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    images = _vision_inputs(conversations)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = processor(
            text=[p + a for p, a in zip(prompts, answers)], images=images, padding=True, return_tensors="pt"
        )
    finally:
        tokenizer.padding_side = old_side
    k = max(len(ids) for ids in answer_ids)
    tail = inputs["input_ids"][:, -k:]
    targets = torch.full_like(tail, -100)
    for row, ids in enumerate(answer_ids):
        got = tail[row, k - len(ids):].tolist()
        if got != ids:  # the answer must tokenize the same on its own and after the prompt
            raise ValueError(f"answer tokens differ in context: {got} vs {ids}")
        targets[row, k - len(ids):] = tail[row, k - len(ids):]
    return dict(inputs), targets


def answer_loss(model: Any, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens; logits only at the last positions."""
    k = targets.shape[1]
    logits = model(**inputs, logits_to_keep=k + 1, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
    )


def warm_start(
    model: Any,
    processor: Any,
    *,
    steps: int = 300,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Supervised fine-tuning of ``model`` in place on the synthetic refinement task (see module doc).

    Deterministic for a given ``seed`` (data and dropout-free training on CPU). Leaves the model
    in eval mode. Returns ``{"loss_first", "loss_last", "seconds"}`` (``loss_last`` averages the
    last 10 steps).
    """
    rng = random.Random(seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def lr_at(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (i - warmup) / max(1, steps - warmup))).item()) * 0.95 + 0.05

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    try:
        for i in range(steps):
            observations = [random_observation(rng) for _ in range(batch_size)]
            inputs, targets = build_batch(processor, observations)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            loss = answer_loss(model, inputs, targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if progress and (i % 25 == 0 or i == steps - 1):
                print(f"warm_start step {i + 1}/{steps} loss {losses[-1]:.4f} ({time.perf_counter() - start:.1f}s)")
    finally:
        model.eval()
    tail = losses[-10:] or [float("nan")]
    return {
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start,
    }


def save_warm_tiny_qwen2vl(path: str | Path, *, seed: int = 0, steps: int = 300) -> Path:
    """Build the tiny policy, :func:`warm_start` it and save model + processor to ``path``."""
    from .policy import build_tiny_qwen2vl

    path = Path(path)
    model, processor = build_tiny_qwen2vl(seed=seed)
    warm_start(model, processor, steps=steps, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
