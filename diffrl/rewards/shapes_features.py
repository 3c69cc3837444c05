"""A fixed feature extractor for the shapes world, the reference space of the adversarial job's Frechet distance
(an FID whose Inception network is replaced by features the project builds: no weights to download).

Per grid cell (9 cells): the cell's brightness level (mean of its brightest pixels), the cosine similarity of its
brightness to each shape's best crisp template (the detector's unblurred templates at every shift,
`diffrl.rewards.shapes_detector`), the mean color of its bright pixels (RGB in [0, 1]), the share of its pixels that
are bright and its edge energy (mean absolute brightness difference between neighbouring pixels) — 9 x (1 + 3 + 3 +
1 + 1) = 81 numbers per image. They measure what the world's images vary in (which cells are occupied, by which
shape, in which color, how crisply), so blurry or off-color samples move away from real renders."""

from __future__ import annotations

import numpy as np

from diffrl.envs.shapes import CELL, GRID, IMAGE_SIZE
from diffrl.rewards.shapes_detector import _TEMPLATES, BLUR_SIGMAS, TOP_PIXELS

CRISP = _TEMPLATES[:, :: len(BLUR_SIGMAS)]  # variants are (shift, blur) with blur innermost; blur 0 first
FEATURES = GRID * GRID * (1 + CRISP.shape[0] + 3 + 1 + 1)


def shapes_features(images: np.ndarray) -> np.ndarray:
    """uint8 images [N, 30, 30, 3] -> float64 features [N, 81]."""
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"shapes features expect images [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.shape}")
    n, cells = len(images), GRID * GRID
    rgb = images.astype(np.float64) / 255.0
    by_cell = rgb.reshape(n, GRID, CELL, GRID, CELL, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, cells, CELL * CELL, 3)
    brightness = by_cell.max(axis=-1)
    level = np.sort(brightness, axis=-1)[..., -TOP_PIXELS:].mean(axis=-1)
    unit = brightness / np.maximum(np.linalg.norm(brightness, axis=-1, keepdims=True), 1e-6)
    cosine = np.einsum("ncp,svp->ncsv", unit, CRISP).max(axis=-1)
    bright = brightness >= 0.5 * np.maximum(level[..., None], 1e-6)
    weight = bright[..., None].astype(np.float64)
    color = (by_cell * weight).sum(axis=2) / np.maximum(weight.sum(axis=2), 1.0)
    share = bright.mean(axis=-1)
    square = brightness.reshape(n, cells, CELL, CELL)
    edges = (np.abs(np.diff(square, axis=-1)).mean(axis=(-2, -1)) + np.abs(np.diff(square, axis=-2)).mean(axis=(-2, -1)))
    return np.concatenate([level[..., None], cosine, color, share[..., None], edges[..., None]], axis=-1).reshape(n, -1)
