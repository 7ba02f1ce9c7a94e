"""Supervised start of the ShapesWorld policy (a tiny Qwen2-VL, enlarged), on a CPU, resumably.

    python -m promptloop.training.shapes.policy --out promptloop/assets/shapesworld/policy-sft \\
        --work runs/shapesworld/policy-sft --steps 1500

Tasks (:mod:`promptloop.worlds.shapes.tasks`): (a) preview -> explicit caption, (b) (user prompt,
preview of an imperfect generation) -> explicit prompt of the intended scene; 112 px previews,
16 image tokens each. Full fine-tuning (AdamW, warm-up + cosine), loss on the answer tokens only
(:func:`promptloop.testing.warmup.answer_loss`). Every ``--ckpt-minutes`` the state is checkpointed
under ``--work`` and the model + processor exported to ``--out``; at the end the held-out figures
(:func:`~promptloop.worlds.shapes.tasks.evaluate_policy`) go to ``--out/training_info.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from promptloop.testing.policy import build_tiny_qwen2vl
from promptloop.testing.warmup import answer_loss, build_answer_batch
from promptloop.worlds.shapes.tasks import POLICY_SEED_BASE, evaluate_policy, mixed_batch, training_texts


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def evaluate(out: Path, n: int) -> dict:
    from promptloop.policies import SamplingConfig, TransformersPolicy

    policy = TransformersPolicy.from_pretrained(out, device="cpu", dtype="float32",
                                                sampling=SamplingConfig(max_new_tokens=64))
    return evaluate_policy(policy, n)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--text-hidden", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--vision-dim", type=int, default=64)
    p.add_argument("--vision-depth", type=int, default=2)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--time-budget-minutes", type=float, default=None)
    p.add_argument("--eval-n", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this exported policy's weights (e.g. the shipped one) instead of random")
    p.add_argument("--describe-share", type=float, default=0.4,
                   help="share of task (a) examples in a batch; the rest are task (b)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    info_path = args.out / "training_info.json"
    if args.eval_only:
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        info["heldout"] = evaluate(args.out, args.eval_n)
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info["heldout"], indent=2))
        return
    model, processor = build_tiny_qwen2vl(args.seed, text_hidden=args.text_hidden, text_layers=args.text_layers,
                                          vision_dim=args.vision_dim, vision_depth=args.vision_depth,
                                          texts=training_texts())
    if args.init_from is not None:
        model.load_state_dict(type(model).from_pretrained(args.init_from, dtype=torch.float32).state_dict())
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, args.steps // 20)

    def lr_at(i: int) -> float:
        if i < warmup:
            return args.lr * (i + 1) / warmup
        done = (i - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))

    ckpt = args.work / "policy.pt"
    step, seconds, losses = 0, 0.0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        step, seconds, losses = state["step"], state["seconds"], state["losses"]
    n_params = sum(q.numel() for q in model.parameters())

    def export() -> None:
        model.eval()
        model.save_pretrained(args.out)
        processor.save_pretrained(args.out)
        model.train()
        info = {"seed": args.seed, "steps": step, "seconds": round(seconds, 1), "parameters": n_params,
                "batch": args.batch, "lr": args.lr, "describe_share": args.describe_share,
                "init_from": str(args.init_from) if args.init_from else None, "loss_last": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
                "command": "python -m promptloop.training.shapes.policy " + " ".join(sys.argv[1:])}
        info_path.write_text(json.dumps(info, indent=2) + "\n")

    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="policy", dynamic_ncols=True)
    last, started = time.time(), time.time()
    while step < args.steps:
        t0 = time.time()
        rng = random.Random(args.seed * 1_000_003 + step)
        seeds = [POLICY_SEED_BASE + step * args.batch + i for i in range(args.batch)]
        inputs, spans = build_answer_batch(processor, *mixed_batch(seeds, rng, describe_share=args.describe_share))
        loss = answer_loss(model, inputs, spans)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seconds += time.time() - t0
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        out_of_time = args.time_budget_minutes and time.time() - started > args.time_budget_minutes * 60
        if time.time() - last > args.ckpt_minutes * 60 or step == args.steps or out_of_time:
            _save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": seconds,
                   "losses": losses}, ckpt)
            export()
            last = time.time()
        if out_of_time:
            tqdm.write(f"time budget reached at step {step}; re-run the same command to continue")
            return
    bar.close()
    info = json.loads(info_path.read_text())
    info["heldout"] = evaluate(args.out, args.eval_n)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info["heldout"], indent=2))


if __name__ == "__main__":
    main()
