"""Headroom of a world where seeing pays (issue 22, stage 2): hand-written controllers, no training.

    python benchmarks/study_seeing_headroom.py --backbone backbone-e --n 128 --seeds 0 1000 --refine 4

Rows, on the same prompts and noise (image i of sampling seed s uses noise seed s + i; DDIM 20
steps, CFG 4), every image scored against the *user's* prompt:

* ``backbone alone (user prompt)``;
* ``oneshot_rule``: :class:`~promptloop.worlds.shapes.controllers.OneShotRule` through the one-shot
  path (:func:`promptloop.oneshot.oneshot_rewrite`);
* ``preview_rule``: the same one-shot rewrite, then :class:`~...controllers.PreviewRule` in the loop
  (:class:`~promptloop.hook.PromptLoopHook`, sync) at the ``--refine`` steps, reading the
  ``--preview`` decoder's preview at ``--preview-size`` px with the world's scene analysis;
* ``hindsight best-of-K``: at the first ``--refine`` step, each of K candidate rewrites
  (:func:`~...controllers.candidate_rewrites`; :func:`~...controllers.rebind_candidates` when the
  first variant re-binds) in turn, and per image the one whose final image
  scores best (a ceiling: it knows the final reward);
* with ``--probe-add``, a diagnostic of whether a shape named only from step k on still gets drawn:
  the explicit prompt without its last shape until step k, then the full prompt with that shape
  first (scored on multi-shape prompts only; shows where a correction can still land).

Prints a markdown table: mean exact reward ± 95 % t-interval over images, the paired difference
with ``oneshot_rule`` (± over image pairs), fidelity, refinement steps, preview decoder; and how
often ``preview_rule`` changed the prompt. ``--prompts training`` runs on the RL training prompts
(for tuning the rules; never report those as held-out figures).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _scores(images, users) -> list[dict]:
    from promptloop.worlds.shapes.reward import fidelity, score_image

    out = []
    for image, prompt in zip(images, users, strict=True):
        s = score_image(image, prompt)
        s["fidelity"] = fidelity(image)
        out.append(s)
    return out


def generate(pipe, prompts: list[str], *, seed: int, steps: int, guidance: float, policy=None,
             refine: list[int] | None = None, preview: str = "vae", size: int = 64, batch_size: int = 16) -> list:
    """Images of ``prompts`` through the library's one sampling path (:func:`promptloop.rollout.sample`):
    image i from noise seed ``image_seed(seed, i)`` whatever its batch; ``policy`` refines at ``refine``."""
    from promptloop.rollout import image_seed, sample

    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        images += sample(pipe, chunk, [image_seed(seed, start + i) for i in range(len(chunk))], policy=policy,
                         schedule=list(refine or []), preview=preview, preview_size=size, num_inference_steps=steps,
                         guidance_scale=guidance, height=64, width=64)[0]
    return images


def _static(fn, name: str):
    from promptloop.policies.base import StaticPolicy

    return StaticPolicy(fn, name=name)


def parse_variant(spec: str) -> tuple[list[int], bool, bool]:
    """``"4"`` -> refine at step 4; ``"2,6"`` -> at steps 2 and 6; a trailing ``c`` also states the
    count, a trailing ``r`` re-binds unplaced shapes to the colours the preview shows (``rebind``)."""
    flags = spec[len(spec.rstrip("cr")):]
    return [int(x) for x in spec.rstrip("cr").split(",")], "c" in flags, "r" in flags


def variant_label(spec: str) -> str:
    steps, count, rebind = parse_variant(spec)
    return f"preview_rule @{','.join(map(str, steps))}{' +count' if count else ''}{' +rebind' if rebind else ''}"


def run(backbone: str, users: list[str], seeds: list[int], variants: list[str], preview: str, size: int,
        k: int, probe_add: list[int], alone: bool = True, echo=print) -> tuple[dict[str, list[dict]], dict]:
    import torch

    from promptloop.oneshot import oneshot_rewrite
    from promptloop.worlds.shapes.backbone import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_backbone
    from promptloop.worlds.shapes.controllers import (
        BACKBONE_INPUT,
        OneShotRule,
        PreviewRule,
        candidate_rewrites,
        rebind_candidates,
    )
    from promptloop.worlds.shapes.grammar import explicit_caption, parse_prompt
    from promptloop.worlds.shapes.rewrite import explicit_shapes

    torch.manual_seed(0)
    pipe = load_backbone(backbone)
    style = BACKBONE_INPUT.get(Path(backbone).name, "explicit")
    steps, cfg = DEFAULT_STEPS, DEFAULT_GUIDANCE
    rows: dict[str, list[dict]] = {}
    info: dict = {"changed": {}, "refinements": {}, "seconds": {}}

    def add(name: str, images, t0: float, who=None) -> None:
        rows.setdefault(name, []).extend(_scores(images, who or users))
        info["seconds"][name] = info["seconds"].get(name, 0.0) + time.perf_counter() - t0

    first_steps, _, first_rebinds = parse_variant(variants[0])
    first_step = first_steps[0]
    for seed in seeds:
        if alone:
            t0 = time.perf_counter()
            add("backbone alone (user prompt)", generate(pipe, users, seed=seed, steps=steps, guidance=cfg), t0)
        t0 = time.perf_counter()
        _, oneshot = oneshot_rewrite(OneShotRule(style), users, steps)
        add("oneshot_rule", generate(pipe, oneshot, seed=seed, steps=steps, guidance=cfg), t0)
        for spec in variants:
            refine, count, rebind = parse_variant(spec)
            label = variant_label(spec)
            t0 = time.perf_counter()
            rule = PreviewRule(style, count=count, rebind=rebind)
            _, first = oneshot_rewrite(rule, users, steps)
            images = generate(pipe, first, seed=seed, steps=steps, guidance=cfg, policy=rule, refine=refine,
                              preview=preview, size=size)
            add(label, images, t0)
            info["refinements"][label] = info["refinements"].get(label, 0) + len(rule.log)
            info["changed"][label] = info["changed"].get(label, 0) + sum(c.changed for c in rule.log)
        if k:
            t0 = time.perf_counter()
            if first_rebinds:  # a re-binding rule: the ceiling over bindings
                cands = {p: rebind_candidates(u, k) for p, u in zip(oneshot, users)}
            else:
                cands = {p: candidate_rewrites(p, k) for p in oneshot}
            per_k = []
            for j in range(k):
                policy = _static(lambda obs, j=j, cands=cands: cands[obs.original_prompt][j], f"candidate-{j}")
                imgs = generate(pipe, oneshot, seed=seed, steps=steps, guidance=cfg, policy=policy,
                                refine=[first_step], preview=preview, size=size)
                per_k.append(_scores(imgs, users))
            best = [max(col, key=lambda s: s["mean"]) for col in zip(*per_k)]
            name = f"hindsight best-of-{k} @{first_step}"
            rows.setdefault(name, []).extend(best)
            info["seconds"][name] = info["seconds"].get(name, 0) + time.perf_counter() - t0
        multi = [i for i, p in enumerate(oneshot) if len(parse_prompt(p).mentions) > 1]
        for step in probe_add:
            table = {}
            for i in multi:
                shapes = explicit_shapes(parse_prompt(oneshot[i]))
                table[explicit_caption(shapes[:-1])] = explicit_caption([shapes[-1]] + shapes[:-1])
            partial = [explicit_caption(explicit_shapes(parse_prompt(oneshot[i]))[:-1]) for i in multi]
            policy = _static(lambda obs, table=table: table[obs.original_prompt], "probe-add")
            t0 = time.perf_counter()
            imgs = generate(pipe, partial, seed=seed, steps=steps, guidance=cfg, policy=policy, refine=[step],
                            preview=preview, size=size)
            add(f"probe: last shape added @{step} (multi-shape prompts)", imgs, t0, [users[i] for i in multi])
        echo(f"  sampling seed {seed}: done")
    return rows, info


def table(rows: dict[str, list[dict]], preview: str, size: int) -> str:
    from promptloop.evaluation import t_interval

    base = [s["mean"] for s in rows["oneshot_rule"]]
    lines = ["| row | exact reward | Δ vs oneshot_rule (paired) | count | fidelity | refinement steps | preview |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, scores in rows.items():
        mean = t_interval([s["mean"] for s in scores])
        if name == "oneshot_rule" or len(scores) != len(base):
            delta = "–"
        else:
            d = t_interval([s["mean"] - b for s, b in zip(scores, base)])
            delta = f"{d.mean:+.3f} ± {d.half_width:.3f}"
        count = sum(s["count"] for s in scores) / len(scores)
        fid = sum(s["fidelity"] for s in scores) / len(scores)
        where = name.split("@")[1].split(" ")[0] if "@" in name else "–"
        dec = f"{preview} {size} px" if "@" in name else "–"
        lines.append(f"| {name} | {mean.mean:.3f} ± {mean.half_width:.3f} | {delta} | {count:.3f} | {fid:.3f} | {where} | {dec} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="backbone-e", help="a shipped backbone name or a folder")
    p.add_argument("--n", type=int, default=128, help="prompts")
    p.add_argument("--prompts", choices=("heldout", "training"), default="heldout")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds")
    p.add_argument("--refine", nargs="+", default=["4"],
                   help="preview_rule variants: '4' (refine at step 4), '2,6' (two refinements), '4c' (also state the "
                        "count), '4r' (re-bind unplaced shapes to the colours seen); the first is the main row and "
                        "the hindsight step")
    p.add_argument("--no-alone", action="store_true", help="skip the backbone-alone row")
    p.add_argument("--preview", choices=("vae", "linear"), default="vae")
    p.add_argument("--preview-size", type=int, default=64)
    p.add_argument("--k", type=int, default=6, help="hindsight candidates (0: no hindsight row)")
    p.add_argument("--probe-add", type=int, nargs="*", default=[], help="diagnostic rows (steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="also write per-image scores (JSON)")
    args = p.parse_args(argv)
    import torch

    from promptloop.worlds.shapes.evaluation import heldout_prompts, training_prompts

    torch.set_num_threads(args.threads)
    users = ([q for _, q in heldout_prompts(args.n)] if args.prompts == "heldout" else training_prompts(args.n))
    start = time.perf_counter()
    rows, info = run(args.backbone, users, args.seeds, args.refine, args.preview, args.preview_size, args.k,
                     args.probe_add, alone=not args.no_alone)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "info": info, "args": vars(args) | {"out": str(args.out)}}))
    print(f"\n{args.backbone}, {args.n} {args.prompts} prompts x sampling seeds {args.seeds}, DDIM 20, CFG 4:\n")
    print(table(rows, args.preview, args.preview_size))
    print("\nprompt changed by preview_rule at: " + ", ".join(
        f"{k} {info['changed'][k]} of {info['refinements'][k]} refinements" for k in info["changed"])
          + f"; {time.perf_counter() - start:.0f} s in all; per row: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in info["seconds"].items()))


if __name__ == "__main__":
    main()
