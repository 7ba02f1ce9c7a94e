"""PIQE, the weight-free no-reference quality reward (minus MATLAB's PIQE score)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from promptloop.rewards import get_reward
from promptloop.rewards.quality import piqe_score


def _texture(seed: int, size=(96, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _noisy(image: Image.Image, seed: int, std: float = 20.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, std, np.asarray(image).shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_piqe_penalises_blocking_and_noise(seed):
    clean = _texture(seed)
    reward = get_reward("piqe")
    clean_score, blocky, noisy = reward([clean, _jpeg(clean, 5), _noisy(clean, seed)], ["", "", ""])
    assert blocky < clean_score - 20          # JPEG quality 5: 8x8 blocks make block edges flat
    assert noisy < clean_score - 10           # Gaussian noise: the noise criterion fires
    assert -100 <= min(clean_score, blocky, noisy) and max(clean_score, blocky, noisy) <= 0


def test_piqe_uniform_image_is_worst_and_any_size_works():
    assert piqe_score(Image.new("RGB", (64, 48), (90, 140, 200))) == 100.0  # no active block
    odd = _texture(3, size=(70, 53))  # not a multiple of 16: padded symmetrically, as MATLAB does
    padded = np.pad(np.asarray(odd.convert("L")), ((0, 10), (0, 11)), mode="symmetric")
    assert piqe_score(odd) == pytest.approx(piqe_score(Image.fromarray(padded)))
    assert 0 < piqe_score(odd) < 100
