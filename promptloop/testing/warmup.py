"""Warm-start the tiny Qwen2-VL policy so that it writes valid refinements.

:func:`~promptloop.testing.policy.build_tiny_qwen2vl` has random weights: its greedy output never
ends with ``<|im_end|>``, so every refinement falls back. :func:`warm_start` fine-tunes it in
place on a synthetic task built in code, shown through exactly the chat messages the policy
receives (:func:`~promptloop.policies.messages.build_messages`, preview image included): answer
with the current prompt, then ``", "`` and the first phrase of :data:`STYLE_WORDS` that the prompt
does not contain yet, then ``<|im_end|>``. Refining again and again grows
``"a red fox in the snow"`` into ``"a red fox in the snow, golden hour"``, then
``"a red fox in the snow, golden hour, soft light"``, and so on, so demos and benchmarks show the
loop at work. It takes a few tens of seconds on two CPU cores.

Training examples mimic what the loop shows the policy: an original prompt from
:data:`~promptloop.testing.prompts.TINY_PROMPTS`, a current prompt that carries the phrases added
by earlier refinements (mostly in the warm policy's own order, sometimes one random phrase), its
history, a step, and a small solid or gradient preview (or none).

The loss is the mean negative log-prob of the answer tokens from the library's one teacher-forced
path (:func:`~promptloop.policies.scoring.completion_logprobs`, which ``TransformersPolicy.score``
and :mod:`promptloop.training.sft` use too). The system prompt is the same in every conversation,
so each step runs it once and shares its keys and values across the batch: a step costs about
40 % less.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from promptloop.policies.messages import build_messages
from promptloop.policies.scoring import Spans, completion_inputs, completion_logprobs
from promptloop.refinement import Observation

from .prompts import TINY_PROMPTS

#: Style phrases the warm policy appends, in this order (it skips those already in the prompt).
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

END_TOKEN = "<|im_end|>"
#: Preview sizes seen in training: the hook's ``preview_size`` in the demo and benchmarks is 112-128.
PREVIEW_SIZES: tuple[int, ...] = (56, 112, 128)
#: Share of training observations whose current prompt carries one random style phrase instead
#: of the warm policy's own earlier additions.
RANDOM_PRIOR_SHARE = 0.2


def next_style_word(prompt: str) -> str | None:
    """The first phrase of :data:`STYLE_WORDS` not already in ``prompt`` (None when all are)."""
    lowered = prompt.lower()
    return next((w for w in STYLE_WORDS if w not in lowered), None)


def warm_target(obs: Observation) -> str:
    """The answer the warm policy is trained to give for ``obs`` (without the end token)."""
    word = next_style_word(obs.current_prompt)
    return obs.current_prompt if word is None else f"{obs.current_prompt}, {word}"


def random_preview(rng: random.Random, size: int | None = None) -> Image.Image:
    """A square RGB image, one colour or a vertical two-colour gradient, like an early preview."""
    size = size or rng.choice(PREVIEW_SIZES)
    def colour() -> torch.Tensor:
        return torch.tensor([rng.randrange(256) for _ in range(3)], dtype=torch.float32)

    top = colour()
    bottom = top if rng.random() < 0.5 else colour()
    t = torch.linspace(0.0, 1.0, size)[:, None, None]
    pixels = (top * (1 - t) + bottom * t).expand(size, size, 3).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def loop_observation(
    original: str,
    refinements: int,
    *,
    step: int = 0,
    num_steps: int = 20,
    preview: Image.Image | None = None,
) -> Observation:
    """The observation the loop shows a policy that has already refined ``refinements`` times,
    the warm policy's way (each time appending :func:`next_style_word`)."""
    history: list[str] = []
    current = original
    for _ in range(refinements):
        word = next_style_word(current)
        if word is None:
            break
        history.append(current)
        current = f"{current}, {word}"
    return Observation(original, current, step, num_steps, preview=preview, history=history)


def random_observation(rng: random.Random, *, preview: bool | None = None) -> Observation:
    """A training observation: a tiny prompt after 0-3 earlier refinements, usually the warm
    policy's own (:func:`loop_observation`), else one random style phrase appended."""
    original = rng.choice(TINY_PROMPTS)
    num_steps = rng.choice((4, 8, 10, 20, 25, 30, 50))
    step = rng.randrange(num_steps)
    if preview is None:
        preview = rng.random() < 0.75
    image = random_preview(rng) if preview else None
    if rng.random() >= RANDOM_PRIOR_SHARE:
        refinements = rng.choices((0, 1, 2, 3), weights=(4, 3, 2, 1))[0]
        return loop_observation(original, refinements, step=step, num_steps=num_steps, preview=image)
    word = rng.choice([w for w in STYLE_WORDS if w not in original])
    return Observation(original, f"{original}, {word}", step, num_steps, preview=image, history=[original])


def build_batch(processor: Any, observations: list[Observation]) -> tuple[dict[str, torch.Tensor], Spans]:
    """Model inputs for ``observations`` (the loop's chat messages) each followed by its target
    answer (:func:`warm_target`) and the end token, right-padded, and the answer spans."""
    tokenizer = processor.tokenizer
    answers = [tokenizer(warm_target(obs) + END_TOKEN, add_special_tokens=False)["input_ids"] for obs in observations]
    return completion_inputs(processor, [build_messages(obs) for obs in observations], answers, padding_side="right")


def warm_start(
    model: Any,
    processor: Any,
    *,
    steps: int = 300,
    seed: int = 0,
    lr: float = 5e-3,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Supervised fine-tuning of ``model`` in place on the synthetic refinement task (module doc).

    AdamW with a short linear warm-up and a cosine decay to 10 % of ``lr``; gradients clipped to
    norm 1. Deterministic for a given ``seed`` on CPU (the data is drawn from
    ``random.Random(seed)``). Leaves the model in eval mode. Returns ``loss_first`` (the first
    step's loss), ``loss_last`` (mean of the last 10 steps) and ``seconds``.
    """
    rng = random.Random(seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        done = (i - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * done)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    try:
        for i in range(steps):
            inputs, spans = build_batch(processor, [random_observation(rng) for _ in range(batch_size)])
            inputs = {k: v.to(device) for k, v in inputs.items()}
            loss = -completion_logprobs(model, inputs, spans, share_prefix=True).mean_logprob()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if progress and (i % 25 == 0 or i == steps - 1):
                elapsed = time.perf_counter() - start
                print(f"warm_start step {i + 1}/{steps}  loss {losses[-1]:.4f}  {elapsed:.1f}s")
    finally:
        model.eval()
    tail = losses[-10:]
    return {
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": sum(tail) / len(tail) if tail else float("nan"),
        "seconds": time.perf_counter() - start,
    }


def save_warm_tiny_qwen2vl(path: str | Path, *, seed: int = 0, steps: int = 300) -> Path:
    """Build the tiny policy (:func:`~promptloop.testing.policy.build_tiny_qwen2vl`), warm-start
    it and save model + processor to ``path``; load it with ``TransformersPolicy.from_pretrained``."""
    from .policy import build_tiny_qwen2vl

    path = Path(path)
    model, processor = build_tiny_qwen2vl(seed=seed)
    warm_start(model, processor, steps=steps, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def cached_warm_tiny_qwen2vl(*, steps: int = 300, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """:func:`save_warm_tiny_qwen2vl`, done once and cached (``$PROMPTLOOP_CACHE`` or ``~/.cache/promptloop``)."""
    import os

    cache = Path(cache_dir or os.environ.get("PROMPTLOOP_CACHE", Path.home() / ".cache" / "promptloop"))
    path = cache / (f"tiny-qwen2vl-warm-{steps}" if seed == 0 else f"tiny-qwen2vl-warm-{steps}-seed{seed}")
    if not (path / "config.json").exists():
        save_warm_tiny_qwen2vl(path, seed=seed, steps=steps)
    return path
