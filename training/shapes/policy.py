"""Supervised start of the ShapesWorld policy (a tiny Qwen2-VL, enlarged), on a CPU, resumably.

    python -m promptloop.training.shapes.policy --out promptloop/assets/shapesworld/policy-sft \\
        --work runs/shapesworld/policy-sft --steps 1500

Tasks (:mod:`promptloop.worlds.shapes.tasks`): (a) preview -> explicit caption, (b) (user prompt,
preview of an imperfect generation) -> explicit prompt of the intended scene; 112 px previews,
16 image tokens each. Full fine-tuning (AdamW, warm-up + cosine), loss on the answer tokens only
(:func:`promptloop.training.sft.answer_loss`). Every ``--ckpt-minutes`` the state is checkpointed
under ``--work`` and the model + processor exported to ``--out``; at the end the held-out figures
(:func:`~promptloop.worlds.shapes.tasks.evaluate_policy`) go to ``--out/training_info.json``.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from promptloop.testing.policy import build_tiny_qwen2vl
from promptloop.training.config import parse_flags
from promptloop.training.runtime import ScriptRun
from promptloop.training.sft import answer_loss, build_answer_batch
from promptloop.worlds.shapes.tasks import POLICY_SEED_BASE, evaluate_policy, mixed_batch, training_texts


@dataclass
class PolicyConfig(ScriptRun):
    """The flags of ``python -m promptloop.training.shapes.policy`` (``--steps`` ...)."""

    steps: int = 1500
    batch: int = 16
    lr: float = 2e-3
    text_hidden: int = 128
    text_layers: int = 3
    vision_dim: int = 64
    vision_depth: int = 2
    eval_n: int = 64
    eval_only: bool = False
    init_from: Path | None = field(default=None, metadata={
        "help": "start from this exported policy's weights (e.g. the shipped one) instead of random"})
    describe_share: float = field(default=0.4, metadata={
        "help": "share of task (a) examples in a batch; the rest are task (b)"})


def evaluate(out: Path, n: int) -> dict:
    from promptloop.policies import SamplingConfig, TransformersPolicy

    policy = TransformersPolicy.from_pretrained(out, device="cpu", dtype="float32",
                                                sampling=SamplingConfig(max_new_tokens=64))
    return evaluate_policy(policy, n)


def _record_heldout(config: PolicyConfig) -> None:
    info_path = config.out / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["heldout"] = evaluate(config.out, config.eval_n)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info["heldout"], indent=2))


def train_policy(config: PolicyConfig) -> None:
    """Train (resuming from ``config.work``), export to ``config.out``, then record the held-out
    figures; with ``eval_only`` only the latter."""
    c = config
    c.start()
    if c.eval_only:
        _record_heldout(c)
        return
    model, processor = build_tiny_qwen2vl(c.seed, text_hidden=c.text_hidden, text_layers=c.text_layers,
                                          vision_dim=c.vision_dim, vision_depth=c.vision_depth,
                                          texts=training_texts())
    if c.init_from is not None:
        model.load_state_dict(type(model).from_pretrained(c.init_from, dtype=torch.float32).state_dict())
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, c.steps // 20)

    def lr_at(i: int) -> float:
        if i < warmup:
            return c.lr * (i + 1) / warmup
        done = (i - warmup) / max(1, c.steps - warmup)
        return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))

    losses: list[float] = []
    loop = c.loop("policy.pt", c.steps, desc="policy",
                  state=lambda: {"model": model.state_dict(), "opt": opt.state_dict(), "losses": losses})
    loop.loss_format = ".3f"
    if (saved := loop.resume()) is not None:
        model.load_state_dict(saved["model"]), opt.load_state_dict(saved["opt"])
        losses[:] = saved["losses"]
    n_params = sum(q.numel() for q in model.parameters())

    def export() -> None:
        model.eval()
        model.save_pretrained(c.out)
        processor.save_pretrained(c.out)
        model.train()
        info = {"seed": c.seed, "steps": loop.step, "seconds": round(loop.seconds, 1), "parameters": n_params,
                "batch": c.batch, "lr": c.lr, "describe_share": c.describe_share,
                "init_from": str(c.init_from) if c.init_from else None,
                "loss_last": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
                "command": "python -m promptloop.training.shapes.policy " + " ".join(sys.argv[1:])}
        (c.out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")

    loop.on_save = export
    model.train()
    for step in loop:
        rng = random.Random(c.seed * 1_000_003 + step)
        seeds = [POLICY_SEED_BASE + step * c.batch + i for i in range(c.batch)]
        inputs, spans = build_answer_batch(processor, *mixed_batch(seeds, rng, describe_share=c.describe_share))
        loss = answer_loss(model, inputs, spans)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        loop.report(loss=losses[-1])
    if not loop.stopped_early:
        _record_heldout(c)


def main(argv: list[str] | None = None) -> None:
    train_policy(parse_flags(PolicyConfig, argv, description=__doc__))


if __name__ == "__main__":
    main()
