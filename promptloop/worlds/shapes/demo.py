"""``promptloop demo`` on ShapesWorld: a shipped backbone, the shipped policy start (optionally with
the shipped GRPO LoRA), exact rewards.

For each prompt the backbone samples twice from the same noise: once as is ("before") and once
with the policy refining the prompt in the loop ("after"). Both images are scored with the exact
reward against the user's prompt; the scores are printed, stored in the trace's metadata
(``trace.json``) and shown on the trace page, with the reward of every preview the policy saw.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from promptloop.worlds.shapes.backbone import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_backbone
from promptloop.worlds.shapes.reward import ATTRIBUTES, score_image
from promptloop.worlds.shapes.world import WORLD

#: The demo's prompts: what a user would type; the policy restates them explicitly.
DEMO_PROMPTS: tuple[str, ...] = (
    "two red circles and a blue square",
    "a yellow triangle left of a green square",
    "three shapes: one purple circle, one blue triangle and one red square",
    "a green circle at the top left and a red triangle at the bottom right",
)
POLICY = WORLD.default_policy
#: The shipped GRPO-trained LoRA of the policy start (the screened recipe, training seed 0, on
#: backbone C; docs/training.md). It beats the SFT start on fresh held-out prompts, so the demo
#: runs it by default; ``adapter=None`` runs the SFT start alone.
ADAPTER = WORLD.default_adapter
#: The backbone the demo steers by default: trained on descriptive captions, so users' short
#: prompts are where it is weak and the policy's explicit restatements help (docs/shapesworld.md).
BACKBONE = WORLD.default_backbone
SCHEDULE = WORLD.schedule
PREVIEW_SIZE = 112


def policy_path(name: str = POLICY) -> Path:
    """Folder of the shipped policy start (``policy-sft``) or a path given as is."""
    return WORLD.policy_path(name)


def adapter_path(name: str) -> Path:
    """Folder of a shipped policy adapter (e.g. ``policy-grpo``) or a path given as is."""
    return WORLD.adapter_path(name)


def _fmt(scores: dict) -> str:
    parts = [f"{a} {scores[a]:.2f}" for a in ATTRIBUTES if scores.get(a) is not None]
    return f"{scores['mean']:.2f} ({', '.join(parts)})"


def run_demo(out: Path, *, prompts: Sequence[str] | None = None, backbone: str = BACKBONE,
             policy: str = POLICY, adapter: str | None = ADAPTER, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, schedule: str = SCHEDULE, mode: str = "sync", seed: int = 0,
             echo: Callable[[str], None] = print) -> dict:
    """Run the ShapesWorld demo; write images, ``trace.json``/``trace.html``/``trace.png`` to ``out``.
    ``adapter``: a LoRA of the policy (default :data:`ADAPTER`, the shipped GRPO one); None: the SFT start.
    Returns the rewards per prompt (``before``/``after``, per attribute)."""
    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.rollout import image_seed, sample
    from promptloop.schedule import RefineSchedule

    prompts = list(prompts or DEMO_PROMPTS)
    RefineSchedule.parse(schedule)  # a bad schedule fails before any model loads
    lora = adapter_path(adapter) if adapter else None
    echo(f"loading the ShapesWorld backbone ({backbone}) and policy ({policy}"
         + (f" + {adapter}" if adapter else "") + ") ...")
    pipe = load_backbone(backbone)
    refiner = TransformersPolicy.from_pretrained(policy_path(policy), adapter=lora, device="cpu", dtype="float32",
                                                 sampling=SamplingConfig(max_new_tokens=64))

    # Both passes from the same noise: image i from image_seed(seed, i) (promptloop.rollout).
    noise = [image_seed(seed, i) for i in range(len(prompts))]
    call = {"num_inference_steps": steps, "guidance_scale": guidance, "height": 64, "width": 64}
    start = time.perf_counter()
    before, _ = sample(pipe, prompts, noise, **call)
    after, trace = sample(pipe, prompts, noise, policy=refiner, schedule=schedule, mode=mode, preview="vae",
                          preview_size=PREVIEW_SIZE, keep_previews=True, **call)
    elapsed = time.perf_counter() - start

    results = []
    for i, prompt in enumerate(prompts):
        previews = [round(score_image(e.preview, prompt)["mean"], 3) for e in trace.for_sample(i)
                    if e.preview is not None]
        results.append({"prompt": prompt, "final_prompt": trace.final_prompts()[i],
                        "before": score_image(before[i], prompt), "after": score_image(after[i], prompt),
                        "preview_rewards": previews})
    mean_before = sum(r["before"]["mean"] for r in results) / len(results)
    mean_after = sum(r["after"]["mean"] for r in results) / len(results)
    trace.meta.update({"world": "shapes", "backbone": backbone, "policy": policy, "adapter": adapter, "seed": seed, "steps": steps,
                       "guidance": guidance, "seconds": round(elapsed, 2), "rewards": results,
                       "reward_before_mean": round(mean_before, 4), "reward_after_mean": round(mean_after, 4)})

    out.mkdir(parents=True, exist_ok=True)
    for i, (b, a) in enumerate(zip(before, after)):
        b.save(out / f"image_{i:02d}_before.png")
        a.save(out / f"image_{i:02d}_after.png")
    trace.save(out, html_page=False, strip=False)
    page = trace.to_html(images=after, title="PromptLoop on ShapesWorld")
    page = page.replace("<section>", _reward_table(results, before, after) + "<section>", 1)
    (out / "trace.html").write_text(page)
    trace.render_strip(images=after).save(out / "trace.png")

    echo(trace.to_text())
    echo("\nexact reward against the user's prompt (mean, per attribute), same noise:")
    for i, r in enumerate(results):
        echo(f"  #{i} {r['prompt']}\n     before: {_fmt(r['before'])}\n     after:  {_fmt(r['after'])}"
             f"\n     previews seen by the policy: {r['preview_rewards']}")
    echo(f"\nmean reward {mean_before:.3f} -> {mean_after:.3f}; {len(prompts)} prompts in {elapsed:.1f} s. "
         f"Open {out / 'trace.html'} (or {out / 'trace.png'}).")
    return {"results": results, "before": mean_before, "after": mean_after}


def _reward_table(results: list[dict], before: list[Image.Image], after: list[Image.Image]) -> str:
    from promptloop.trace import thumbnail_data_url

    rows = []
    for i, r in enumerate(results):
        rows.append(
            f"<tr><td>#{i}</td><td>{html.escape(r['prompt'])}</td>"
            f"<td><img src=\"{thumbnail_data_url(before[i], 96)}\" alt=\"before\"><br>{html.escape(_fmt(r['before']))}</td>"
            f"<td><img src=\"{thumbnail_data_url(after[i], 96)}\" alt=\"after\"><br>{html.escape(_fmt(r['after']))}</td>"
            f"<td>{html.escape(r['final_prompt'])}</td>"
            f"<td>{html.escape(', '.join(f'{v:.2f}' for v in r['preview_rewards']))}</td></tr>")
    return ("<h2>Exact reward before / after refinement (same noise)</h2>"
            "<table border=1 cellpadding=4 style=\"border-collapse:collapse;font-size:.85rem\">"
            "<tr><th></th><th>user prompt</th><th>without the policy</th><th>with the policy</th>"
            "<th>final prompt</th><th>reward of each preview</th></tr>" + "".join(rows) + "</table>")
