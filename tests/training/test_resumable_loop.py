"""The one-file checkpoints of the world-asset scripts (training/runtime.py: ResumableLoop,
ScriptRun) and their flags (training/config.py: parse_flags): a run stopped and re-run reaches the
same weights as one uninterrupted run; the scripts' command lines read as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from promptloop.training.config import parse_flags
from promptloop.training.runtime import ResumableLoop, ScriptRun
from promptloop.training.shapes.backbone import BackboneConfig
from promptloop.training.shapes.policy import PolicyConfig


def _train(path: Path, total: int, *, budget: float | None = None) -> tuple[torch.nn.Module, ResumableLoop, list]:
    """SGD with momentum on a tiny model, noise drawn from the step (as the scripts do)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saves: list[int] = []
    loop = ResumableLoop(path, total, state=lambda: {"model": model.state_dict(), "opt": opt.state_dict()},
                         budget_minutes=budget, on_save=lambda: saves.append(loop.step))
    if (saved := loop.resume()) is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
    for step in loop:
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loop.report(loss=loss.item())
    return model, loop, saves


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    whole, loop, saves = _train(tmp_path / "whole.pt", 6)
    assert (loop.step, saves, loop.stopped_early) == (6, [6], False)
    _, first, _ = _train(tmp_path / "parts.pt", 2)  # as if stopped after step 2
    resumed, second, saves = _train(tmp_path / "parts.pt", 6)
    assert saves == [6] and second.seconds >= first.seconds > 0
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    saved = torch.load(tmp_path / "parts.pt", weights_only=False)
    assert saved["step"] == 6 and set(saved) == {"model", "opt", "step", "seconds"}
    _, done, saves = _train(tmp_path / "parts.pt", 6)  # a finished run does nothing
    assert (done.step, saves) == (6, [])


def test_the_time_budget_checkpoints_and_stops(tmp_path):
    _, loop, saves = _train(tmp_path / "s.pt", 5, budget=1e-9)
    assert (loop.step, saves, loop.stopped_early) == (1, [1], True)
    _, loop, saves = _train(tmp_path / "s.pt", 5)
    assert (loop.step, saves, loop.stopped_early) == (5, [5], False)


def test_the_scripts_flags_are_unchanged(tmp_path):
    backbone = parse_flags(BackboneConfig, [
        "--out", "o", "--work", "w", "--seed", "2", "--vae-from", "v", "--vae-steps", "3", "--vae-batch", "4",
        "--vae-lr", "0.5", "--vae-fg-weight", "4", "--decoder-steps", "5", "--decoder-lr", "0.25", "--recon-n", "6",
        "--num-scenes", "7", "--unet-steps", "8", "--batch", "9", "--unet-lr", "0.125", "--ema", "0.9",
        "--caption-dropout", "0.2", "--captions", "descriptive", "--ckpt-minutes", "1.5",
        "--time-budget-minutes", "2.5", "--threads", "1", "--stop-after", "latents"])
    assert backbone == BackboneConfig(
        out=Path("o"), work=Path("w"), seed=2, vae_from="v", vae_steps=3, vae_batch=4, vae_lr=0.5, vae_fg_weight=4.0,
        decoder_steps=5, decoder_lr=0.25, recon_n=6, num_scenes=7, unet_steps=8, batch=9, unet_lr=0.125, ema=0.9,
        caption_dropout=0.2, captions="descriptive", ckpt_minutes=1.5, time_budget_minutes=2.5, threads=1,
        stop_after="latents")
    defaults = parse_flags(BackboneConfig, ["--out", "o", "--work", "w"])
    assert (defaults.vae_steps, defaults.unet_steps, defaults.captions, defaults.time_budget_minutes) == (
        600, 6000, "mixed", None)
    policy = parse_flags(PolicyConfig, [
        "--out", "o", "--work", "w", "--steps", "3", "--batch", "2", "--lr", "0.1", "--text-hidden", "64",
        "--text-layers", "1", "--vision-dim", "32", "--vision-depth", "1", "--eval-n", "2", "--eval-only",
        "--init-from", "p", "--describe-share", "0.5", "--threads", "1"])
    assert (policy.steps, policy.eval_only, policy.init_from, policy.describe_share) == (3, True, Path("p"), 0.5)
    assert parse_flags(PolicyConfig, ["--out", "o", "--work", "w"]).eval_only is False
    for argv in (["--out", "o"], ["--out", "o", "--work", "w", "--captions", "terse"]):
        with pytest.raises(SystemExit):
            parse_flags(BackboneConfig, argv)
    assert issubclass(BackboneConfig, ScriptRun) and issubclass(PolicyConfig, ScriptRun)
