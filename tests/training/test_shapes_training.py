"""The ShapesWorld backbone training script: shape-weighted VAE loss, recorded reconstruction figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from promptloop.training.shapes import backbone as train
from promptloop.worlds.shapes.render import render_scene
from promptloop.worlds.shapes.scene import BACKGROUND, sample_scene


def test_pixel_weights_mark_the_shapes():
    image = render_scene(sample_scene(3))
    x = train._to_tensor([image])
    w = train._pixel_weights(x, 4.0)[0, 0].numpy()
    off_background = np.abs(np.asarray(image, dtype=np.int16) - np.array(BACKGROUND)).max(axis=-1)
    assert np.all(w[off_background == 0] == 1.0)
    assert np.all(w[off_background > 20] == 5.0)
    assert 0.02 < (w > 1).mean() < 0.6


def test_weighted_loss_counts_shape_errors_more():
    x = train._to_tensor([render_scene(sample_scene(5))])
    shapes = train._pixel_weights(x, 1.0) > 1
    on_shapes = x + 0.5 * shapes  # the same error, once on the shapes, once on as many background pixels
    idx = torch.nonzero(~shapes.flatten())[: int(shapes.sum())].flatten()
    on_background = x.clone().flatten(2)
    on_background[:, :, idx] += 0.5
    on_background = on_background.view_as(x)
    plain = (train._reconstruction_loss(on_shapes, x, 0.0), train._reconstruction_loss(on_background, x, 0.0))
    assert plain[0].item() == pytest.approx(plain[1].item(), rel=1e-5)
    weighted = (train._reconstruction_loss(on_shapes, x, 4.0), train._reconstruction_loss(on_background, x, 4.0))
    assert weighted[0] > 2 * weighted[1]


def test_vae_stages_record_reconstruction_and_resume(tmp_path):
    args = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--vae-steps", "3", "--vae-batch", "2",
            "--vae-fg-weight", "4", "--decoder-steps", "2", "--num-scenes", "4", "--recon-n", "4", "--threads", "1",
            "--stop-after", "latents"]
    train.main(args)
    info = json.loads((tmp_path / "work" / "vae_info.json").read_text())
    assert info["fg_weight"] == 4.0 and info["steps"] == 3 and info["decoder_steps"] == 2
    for key in ("reconstruction", "reconstruction_after_decoder"):
        assert set(info[key]) >= {"color", "shape", "count", "position", "mean", "fidelity"}
        assert 0.0 <= info[key]["mean"] <= 1.0
    latents = torch.load(tmp_path / "work" / "latents.pt")
    assert latents.shape == (4, 4, 8, 8)
    # re-running the same command resumes: every stage is found done, nothing changes
    before = (tmp_path / "work" / "latents.pt").stat().st_mtime_ns
    train.main(args)
    assert (tmp_path / "work" / "latents.pt").stat().st_mtime_ns == before


def test_unet_stage_resumes_from_its_checkpoint(tmp_path):
    args = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--vae-steps", "2", "--vae-batch", "2",
            "--num-scenes", "4", "--recon-n", "4", "--batch", "2", "--threads", "1"]
    train.main([*args, "--unet-steps", "1"])
    first = torch.load(tmp_path / "work" / "unet.pt", weights_only=False)
    train.main([*args, "--unet-steps", "2"])  # the same command with a larger budget goes on from step 1
    second = torch.load(tmp_path / "work" / "unet.pt", weights_only=False)
    assert (first["step"], second["step"]) == (1, 2) and second["seconds"] > first["seconds"]
    info = json.loads((tmp_path / "out" / "training_info.json").read_text())
    assert info["unet_steps"] == 2 and info["command"].startswith("python -m promptloop.training.shapes.backbone")
