"""A tiny Qwen2-VL policy that has learnt to answer with a fixed prompt (trained here, in seconds).

Random weights answer with token salad that the parser rejects, so every refinement would fall
back and an end-to-end comparison would compare nothing. A few dozen optimiser steps teach the
tiny model one answer (ending with ``<|im_end|>``), with a wide margin, so greedy decoding gives
the same text under transformers and vLLM and the refinements are applied. A peft LoRA adapter
trained the same way teaches a second answer, to tell adapters apart.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from promptloop.policies.messages import build_messages, prepare_conversation
from promptloop.refinement import Observation

BASE_ANSWER = "a watercolor painting, soft light"
ADAPTER_ANSWER = "an oil painting"
_SUBJECTS = ["a cat", "a red fox", "a lighthouse at dusk", "a bowl of fruit", "a castle", "a dog on a beach"]


def _observations(n: int, seed: int) -> list[Observation]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = rng.choice(_SUBJECTS)
        current = rng.choice([prompt, BASE_ANSWER, ADAPTER_ANSWER, prompt + ", detailed"])
        steps = rng.choice([4, 6, 10, 20, 50])
        preview = None
        if rng.random() < 0.85:
            size = rng.choice([32, 56, 64, 96])
            preview = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
            if rng.random() < 0.5:  # some texture
                noise = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
                preview = Image.fromarray(noise.numpy())
        history = [prompt] if current != prompt else []
        out.append(Observation(prompt, current, rng.randrange(steps), steps, preview=preview, history=history))
    return out


def _examples(processor, answer: str, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """(input_ids, labels, extra model inputs) for ``n`` observations answered with ``answer``."""
    target = processor.tokenizer(answer + "<|im_end|>", add_special_tokens=False, return_tensors="pt").input_ids[0]
    out = []
    for obs in _observations(n, seed):
        conv, images = prepare_conversation(build_messages(obs))  # as the policies prepare previews
        prompt = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        enc = processor(text=[prompt], images=images or None, return_tensors="pt")
        ids = torch.cat([enc["input_ids"][0], target])[None]
        labels = torch.cat([torch.full_like(enc["input_ids"][0], -100), target])[None]
        extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        if "mm_token_type_ids" in extra:  # per token: the answer tokens are text (0)
            types = extra["mm_token_type_ids"]
            extra["mm_token_type_ids"] = torch.cat([types, torch.zeros(1, len(target), dtype=types.dtype)], 1)
        out.append((ids, labels, extra))
    return out


def save_trained_policy(
    policy_dir: str | Path, adapter_dir: str | Path | None = None, *, steps: int = 60, seed: int = 0
) -> tuple[Path, Path | None]:
    """Train the tiny Qwen2-VL to answer :data:`BASE_ANSWER` and, jointly, a peft LoRA adapter
    (rank 16 on the language model's projections) to answer :data:`ADAPTER_ANSWER`; save both.

    Joint training (base steps with the adapter disabled, adapter steps with it enabled) keeps
    each answer's margin wide in a few dozen steps on CPU.
    """
    from peft import LoraConfig, get_peft_model

    from promptloop.testing.policy import build_tiny_qwen2vl

    policy_dir = Path(policy_dir)
    model, processor = build_tiny_qwen2vl(seed=seed)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=_LORA_TARGETS)
    peft_model = get_peft_model(model, config)
    for name, p in peft_model.named_parameters():  # the base LM and the adapter; vision frozen
        p.requires_grad_("visual" not in name)
    base_examples = _examples(processor, BASE_ANSWER, 6, seed)
    adapter_examples = _examples(processor, ADAPTER_ANSWER, 6, seed + 1)
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=5e-3)
    torch.manual_seed(seed)
    peft_model.train()
    recent: list[tuple[float, float]] = []
    for step in range(steps):
        ids, labels, extra = base_examples[step % len(base_examples)]
        with peft_model.disable_adapter():
            lb = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, **extra).loss
        ids, labels, extra = adapter_examples[step % len(adapter_examples)]
        la = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, **extra).loss
        (2 * lb + la).backward()
        opt.step()
        opt.zero_grad()
        recent = (recent + [(lb.item(), la.item())])[-len(base_examples):]
    peft_model.eval()
    base_loss = max(b for b, _ in recent)
    adapter_loss = max(a for _, a in recent)
    assert base_loss < 0.2 and adapter_loss < 0.2, f"the tiny policy did not learn (losses {base_loss:.3f}, {adapter_loss:.3f})"
    saved_adapter = None
    if adapter_dir is not None:
        peft_model.save_pretrained(adapter_dir)
        saved_adapter = Path(adapter_dir)
    base = peft_model.unload()
    for p in base.parameters():
        p.requires_grad_(True)
    base.save_pretrained(policy_dir)
    processor.save_pretrained(policy_dir)
    return policy_dir, saved_adapter


_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
