"""`promptloop eval` and its Python API (promptloop.evaluation) on tiny models."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from promptloop.evaluation import (
    Cell,
    EvalRow,
    EvalSettings,
    evaluate,
    standard_rows,
    summarize,
    t_interval,
)
from promptloop.evaluation import cells as cells_module
from promptloop.evaluation import runner as runner_module
from promptloop.evaluation.cells import compute_cell, sample_batch
from promptloop.policies import StaticPolicy

PROMPTS = ["a red fox in the snow", "a sailing boat on a calm blue sea", "a cup of coffee next to a laptop on a desk"]


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def ddpo_adapter(tmp_path_factory):
    """A diffusers LoRA folder written by the DDPO trainer's own adapter class, with non-zero
    weights so the tuned backbone differs from the plain one."""
    from promptloop.testing import tiny_pipeline
    from promptloop.training.diffusion.lora import UNetLoRA

    unet = tiny_pipeline("sd").unet
    lora = UNetLoRA(unet, r=4, alpha=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return lora.save_pretrained(tmp_path_factory.mktemp("ddpo") / "adapter")


@pytest.mark.slow  # four rows x two seeds with the tiny policy: about a minute on two idle cores
def test_cli_writes_report_and_second_run_reuses_cells(tmp_path, monkeypatch, warm_policy_dir, ddpo_adapter):
    from promptloop.cli import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# held out\n" + "\n".join(PROMPTS) + "\n")
    out = tmp_path / "eval"
    args = ["eval", "--backbone", "tiny:sd", "--policy", str(warm_policy_dir), "--backbone-adapter", str(ddpo_adapter),
            "--prompts", str(prompts), "--seeds", "0,1", "--rewards", "jpeg_compressibility,jpeg_incompressibility",
            "--steps", "3", "--size", "64", "--num-strips", "2", "--device", "cpu", "-q", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    names = ["backbone", "backbone+policy", "tuned", "tuned+policy"]
    for name in names:
        assert f"| {name} |" in result.output
        assert (out / "strips" / f"{name}.png").stat().st_size > 0
    assert "8 cells computed, 0 reused" in result.output
    assert (out / "rewards.png").read_bytes()[:4] == b"\x89PNG"
    assert "| backbone+policy |" in (out / "results.md").read_text()
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["row"], r["reward"]) for r in table] == [(n, r) for n in names
                                                        for r in ("jpeg_compressibility", "jpeg_incompressibility")]
    assert all(r["n_seeds"] == "2" and r["n_images"] == "6" for r in table)
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in table)

    saved = {p.name: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert len(saved) == 8
    plain, tuned = saved["backbone__seed0.json"], saved["tuned__seed0.json"]
    steered = saved["backbone+policy__seed0.json"]
    # The tuned backbone really carries the DDPO adapter; the policy really rewrote the prompts.
    assert plain["values"]["jpeg_compressibility"] != tuned["values"]["jpeg_compressibility"]
    assert plain["final_prompts"] == PROMPTS
    assert all(f != p and f.startswith(p) for f, p in zip(steered["final_prompts"], PROMPTS))
    assert steered["costs"]["policy_generations"] == 2 * len(PROMPTS)  # evenly:2 on 3 prompts
    assert steered["costs"]["policy_tokens"] > 0 and plain["costs"]["policy_tokens"] == 0
    assert plain["costs"]["denoising_steps"] == 3 * len(PROMPTS)

    # Second run: every cell is reused; nothing is loaded or sampled, no cell file is rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}

    def must_not_run(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(cells_module, "compute_cell", must_not_run)
    monkeypatch.setattr(runner_module, "load_row_models", must_not_run)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "0 cells computed, 8 reused" in again.output
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    monkeypatch.undo()

    # A changed setting recomputes (only the backbone row here, to stay fast).
    calls = []
    real = cells_module.compute_cell
    monkeypatch.setattr(cells_module, "compute_cell", lambda *a, **k: calls.append(a[2].name) or real(*a, **k))
    settings = EvalSettings(prompts=str(prompts), seeds=[0, 1], rewards=["jpeg_compressibility", "jpeg_incompressibility"],
                            num_inference_steps=2, height=64, width=64, device="cpu")
    report = evaluate([EvalRow("backbone", "tiny:sd")], settings, out, progress=False)
    assert calls == ["backbone", "backbone"] and report.computed == [("backbone", 0), ("backbone", 1)]


def test_paired_noise_backbone_alone_equals_a_policy_that_never_fires(tiny_pipes):
    pipe = tiny_pipes["sd"]
    seen: list = []

    def grab(images, prompts):
        seen.append([_pixels(im) for im in images])
        return [None] * len(images)  # not applicable: left out of the means

    settings = EvalSettings(prompts=PROMPTS, seeds=[3], rewards=[], metrics={"grab": grab}, num_inference_steps=3,
                            height=64, width=64, batch_size=2)
    policy = StaticPolicy(lambda obs: obs.current_prompt + ", neon lights, dramatic")
    alone = compute_cell(pipe, None, EvalRow("alone", "tiny:sd"), settings, 3, {})
    never = compute_cell(pipe, policy, EvalRow("never", "tiny:sd", policy="x", schedule="none"), settings, 3, {})
    fires = compute_cell(pipe, policy, EvalRow("fires", "tiny:sd", policy="x", schedule="0"), settings, 3, {})
    assert alone.mean("grab") is None and alone.count("grab") == 0
    a, n, f = seen
    assert all(np.array_equal(x, y) for x, y in zip(a, n))
    assert never.final_prompts == PROMPTS
    assert fires.final_prompts != PROMPTS and not all(np.array_equal(x, y) for x, y in zip(a, f))
    # Images of one cell start from different noise; another seed gives other images.
    assert not np.array_equal(a[0], a[1])
    compute_cell(pipe, None, EvalRow("alone", "tiny:sd"), settings, 4, {})
    assert not np.array_equal(seen[-1][0], a[0])


def test_t_interval_and_summaries():
    interval = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446 * math.sqrt(5 / 3) / 2  # t_{0.975,3} * s / sqrt(n)
    assert interval.mean == pytest.approx(2.5)
    assert (interval.low, interval.high) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-4)
    assert math.isnan(t_interval([2.0]).low)

    def cell(row, seed, values):
        return Cell(row=row, seed=seed, prompts=[], final_prompts=[], values={"r": values, "m": [None, 1.0]}, costs={})

    cells = [cell("a-s0", 0, [1.0, 3.0]), cell("a-s0", 1, [3.0, 5.0]), cell("a-s1", 0, [5.0, 7.0]),
             cell("a-s1", 1, [9.0, 11.0]), cell("b", 0, [0.0, 0.0])]
    by_row = {(s.row, s.reward): s for s in summarize(cells)}
    assert by_row[("a-s0", "r")].mean == pytest.approx(3.0)  # per-cell means 2 and 4
    assert by_row[("a-s0", "r")].half_width == pytest.approx(12.7062 * math.sqrt(2) / math.sqrt(2), rel=1e-4)
    assert by_row[("a-s0", "m")].n_images == 2 and by_row[("a-s0", "m")].mean == 1.0
    pooled = {(s.row, s.reward): s for s in summarize(cells, group=lambda r: r.split("-")[0])}
    assert pooled[("a", "r")].mean == pytest.approx(5.5) and pooled[("a", "r")].n_seeds == 4
    per_row = {(s.row, s.reward): s for s in summarize(cells, group=lambda r: r.split("-")[0], unit="row")}
    assert per_row[("a", "r")].mean == pytest.approx(5.5) and per_row[("a", "r")].n_seeds == 2
    assert per_row[("a", "r")].half_width == pytest.approx(12.7062 * math.sqrt(12.5) / math.sqrt(2), rel=1e-4)


def test_oneshot_rewrite_is_what_the_pipeline_samples_and_training_shares_it(tiny_pipes, warm_policy_dir):
    import promptloop.rollout
    from promptloop import oneshot
    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.rewards import load_reward
    from promptloop.training import rollouts

    assert rollouts.sample is cells_module.sample is promptloop.rollout.sample  # the one sampling path
    pipe = tiny_pipes["sd"]
    policy = StaticPolicy(lambda obs: "a watercolor painting of " + obs.current_prompt)
    trace, rewritten = oneshot.oneshot_rewrite(policy, PROMPTS[:2], 3)
    assert rewritten == ["a watercolor painting of " + p for p in PROMPTS[:2]]
    assert [e.step for e in trace.entries] == [-1, -1] and trace.meta["policy_calls"] == 1

    settings = EvalSettings(prompts=PROMPTS[:2], seeds=[0], rewards=["jpeg_compressibility"], num_inference_steps=3,
                            height=64, width=64)
    images, trace = sample_batch(pipe, policy, EvalRow("oneshot", "tiny:sd", policy="x", schedule="oneshot"),
                                 settings, PROMPTS[:2], [5, 6])
    direct = pipe(rewritten, num_inference_steps=3, guidance_scale=5.0, height=64, width=64,
                  generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    assert trace.final_prompts() == rewritten
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(images, direct))

    # Training's one-shot rollouts go through the same function and keep tokens and log-probs.
    warm = TransformersPolicy.from_pretrained(warm_policy_dir, device="cpu",
                                              sampling=SamplingConfig(max_new_tokens=24, return_logprobs=True))
    batch = rollouts.rollout(pipe, warm, PROMPTS[:2], load_reward("jpeg_compressibility"), num_generations=1,
                             schedule="oneshot", seed=0, num_inference_steps=3, height=64, width=64)
    assert len(batch.actions) == 2 and all(a.step == -1 and a.token_ids and a.old_logprobs for a in batch.actions)
    again = pipe(batch.trace.final_prompts(), num_inference_steps=3, guidance_scale=5.0, height=64, width=64,
                 generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images  # image_seed(0, j)
    assert batch.trace.final_prompts() != PROMPTS[:2]
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(batch.images, again))


def test_policy_adapter_is_loaded(tmp_path, warm_policy_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(warm_policy_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    model.save_pretrained(tmp_path / "adapter")
    settings = EvalSettings(prompts=PROMPTS[:1], seeds=[0], rewards=["jpeg_compressibility"], device="cpu")
    _, policy = runner_module.load_row_models(
        EvalRow("p", "tiny:sd", policy=str(warm_policy_dir), policy_adapter=str(tmp_path / "adapter")), settings)
    lora_b = [p for n, p in policy.model.named_parameters() if "lora_B" in n]
    assert policy.adapters == {"default": str(tmp_path / "adapter")}
    assert lora_b and all(torch.all(p == 0.01) for p in lora_b)


def test_standard_rows_and_config(tmp_path):
    from promptloop.evaluation.config import load_eval_config

    rows = standard_rows("b", policy="p", backbone_adapter="t")
    assert [r.name for r in rows] == ["backbone", "backbone+policy", "tuned", "tuned+policy"]
    assert rows[3].backbone_adapter == "t" and rows[3].policy == "p" and rows[2].policy is None
    assert [r.name for r in standard_rows("b")] == ["backbone"]
    config = tmp_path / "eval.yaml"
    config.write_text("settings: {prompts: tiny-heldout, seeds: [0, 1], rewards: [shapes]}\n"
                      "rows:\n  alone: {backbone: tiny:sd}\n  loop: {backbone: tiny:sd, policy: tiny-warm, schedule: oneshot}\n")
    rows, settings = load_eval_config(config)
    assert [(r.name, r.schedule) for r in rows] == [("alone", "evenly:2"), ("loop", "oneshot")]
    assert len(EvalSettings(**settings).prompts) == 5
    config.write_text("rows: [{name: x, backbone: b, polcy: p}]\n")
    with pytest.raises(ValueError, match="polcy"):
        load_eval_config(config)


def test_shapes_attribute_metrics_leave_unconstrained_attributes_out():
    from promptloop.worlds.shapes import render_scene, score_image
    from promptloop.worlds.shapes.evaluation import attribute_metrics, heldout_prompts

    pairs = heldout_prompts(8)
    images = [render_scene(scene) for scene, _ in pairs]
    prompts = [p for _, p in pairs]
    metrics = attribute_metrics()
    for name, metric in metrics.items():
        got = metric(images, prompts)
        want = [score_image(im, p)[name.removeprefix("shapes_")] for im, p in zip(images, prompts)]
        assert got == want
    position = metrics["shapes_position"](images, prompts)
    assert None in position and any(v is not None for v in position)  # terse prompts state no position
    assert metrics["shapes_color"](images[:1], ["not a shapes prompt"]) == [0.0]
