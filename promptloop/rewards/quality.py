"""PIQE: a no-reference image quality score that needs no weights.

PIQE (Perception-based Image Quality Evaluator; Venkatanath et al., NCC 2015), as MATLAB's ``piqe``
computes it: the grey image is normalised to MSCN coefficients (local mean and deviation from a
7x7 Gaussian window, sigma 7/6, replicated borders); of its 16x16 blocks, those whose MSCN variance
exceeds 0.1 are "spatially active"; an active block is *impaired* when a 6-pixel segment of one of
its edges is nearly flat (blockiness), and *noisy* when its deviation is large relative to how its
two centre columns differ from the rest; the score is
``100 * (1 + sum(impaired * (1 - var) + noisy * var)) / (1 + number of active blocks)``,
from 0 (best) to 100 (worst; also a uniform image).

The ``piqe`` reward returns **minus** the score, so that higher is better (0 is the best value).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from promptloop.rewards.registry import Metadata, register_reward

BLOCK = 16
ACTIVITY_THRESHOLD = 0.1
IMPAIRED_THRESHOLD = 0.1
SEGMENT = 6


def _gaussian_blur(image: np.ndarray, size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    half = size // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, half, mode="edge")
    rows = sum(kernel[i] * padded[i:i + image.shape[0], :] for i in range(size))
    return sum(kernel[i] * rows[:, i:i + image.shape[1]] for i in range(size))


def mscn(gray: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + 1)``."""
    mu = _gaussian_blur(gray)
    sigma = np.sqrt(np.abs(_gaussian_blur(gray * gray) - mu * mu))
    return (gray - mu) / (sigma + 1.0)


def _blocks(array: np.ndarray) -> np.ndarray:
    rows, cols = array.shape[0] // BLOCK, array.shape[1] // BLOCK
    return array.reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2).reshape(-1, BLOCK, BLOCK)


def _impaired(blocks: np.ndarray) -> np.ndarray:
    """A block edge holding a 6-pixel segment with standard deviation under the threshold."""
    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    segments = np.lib.stride_tricks.sliding_window_view(edges, SEGMENT, axis=-1)
    return (segments.std(axis=-1, ddof=1) < IMPAIRED_THRESHOLD).any(axis=(1, 2))


def _noisy(blocks: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Block deviation vs. the ratio of centre to surround deviation, as MATLAB's ``piqe``.

    The centre is columns 8 and 9 (1-based); the surround is what is left after MATLAB deletes
    column 8 and then column 9 *of the shortened block* (original columns 8 and 10) - kept as is.
    """
    center = blocks[:, :, [7, 8]].reshape(len(blocks), -1)
    surround = np.delete(blocks, [7, 9], axis=2).reshape(len(blocks), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.nan_to_num(center.std(axis=1, ddof=1) / surround.std(axis=1, ddof=1), nan=0.0)
        sigma = np.sqrt(variance)
        beta = np.abs(sigma - ratio) / np.maximum(sigma, ratio)
    return sigma > 2 * beta


def piqe_score(image: Image.Image) -> float:
    """PIQE of ``image``: 0 (best) to 100 (worst)."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    pad_rows, pad_cols = -gray.shape[0] % BLOCK, -gray.shape[1] % BLOCK
    gray = np.pad(gray, ((0, pad_rows), (0, pad_cols)), mode="symmetric")
    peak = gray.max()
    gray = np.round(255 * gray / peak) if peak > 0 else gray
    blocks = _blocks(mscn(gray))
    variance = blocks.reshape(len(blocks), -1).var(axis=1, ddof=1)
    active = variance > ACTIVITY_THRESHOLD
    distortion = (_impaired(blocks) * (1 - variance) + _noisy(blocks, variance) * variance)[active].sum()
    return float(100.0 * (distortion + 1.0) / (active.sum() + 1.0))


@register_reward("piqe")
def piqe():
    """Minus the PIQE score of each image (higher is better; the prompt is not used)."""

    def score(images: Sequence[Image.Image], prompts: Sequence[str], metadata: Metadata = None) -> list[float]:
        return [-piqe_score(image) for image in images]

    return score
