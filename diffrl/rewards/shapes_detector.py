"""An exact classical-CV detector and color classifier for the shapes world (numpy only).

It stands in for GenEval's Mask2Former and CLIP color classifier (djghosh13/geneval) on
`diffrl.envs.shapes` images. Each of the 9 grid cells is analysed on its own, vectorized over all cells:
- presence: the cell's level (mean of its 8 brightest pixels, brightness = max over RGB) is at least MIN_LEVEL and at
  least MIN_PIXELS pixels reach half that level; the half-level pixels form the mask and box.
- shape: cosine similarity between the cell's brightness and each shape's templates (the rendered 8x8 mask, also
  shifted by up to 1 px and blurred), so dimming does not matter and blurry model outputs still match.
- confidence: 1 - r_best / r_second, where r = 1 - cos^2 is the fraction of the cell's energy a shape's best template
  leaves unexplained. A clean render scores 1.0; a blob halfway between two shapes scores near 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffrl.envs.shapes import CELL, COLORS, GRID, IMAGE_SIZE, OBJECT_SIZE, SHAPE_MASKS, SHAPES
from diffrl.rewards.geneval import Detection

MIN_LEVEL = 0.25
MIN_PIXELS = 12
TOP_PIXELS = 8
BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.1, 1.5)
MAX_SHIFT = 1


def _gaussian_blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with zero padding (light falls off the frame, as it would off a cell)."""
    if sigma == 0:
        return frame
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    rows = np.apply_along_axis(np.convolve, 1, frame, kernel, mode="same")
    return np.apply_along_axis(np.convolve, 0, rows, kernel, mode="same")


def _templates() -> np.ndarray:
    """Unit-norm templates [shape, variant, CELL*CELL]: every shape at every shift and blur, in a cell frame."""
    pad = (CELL - OBJECT_SIZE) // 2
    out = []
    for shape in SHAPES:
        variants = []
        for dy in range(pad - MAX_SHIFT, pad + MAX_SHIFT + 1):
            for dx in range(pad - MAX_SHIFT, pad + MAX_SHIFT + 1):
                frame = np.zeros((CELL + 2 * pad, CELL + 2 * pad))
                frame[pad + dy : pad + dy + OBJECT_SIZE, pad + dx : pad + dx + OBJECT_SIZE] = SHAPE_MASKS[shape]
                for sigma in BLUR_SIGMAS:
                    cell = _gaussian_blur(frame, sigma)[pad : pad + CELL, pad : pad + CELL].ravel()
                    variants.append(cell / np.linalg.norm(cell))
        out.append(variants)
    return np.asarray(out, dtype=np.float32)


_TEMPLATES = _templates()


def analyze_cells(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image and cell: (present [N,9] bool, shape index [N,9], confidence [N,9], mask [N,9,CELL,CELL] bool).

    Works on a whole batch at once so that scoring thousands of images per step stays cheap.
    """
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"shapes detector expects images [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.shape}")
    n = len(images)
    brightness = images.max(axis=-1).astype(np.float32) / 255.0
    cells = brightness.reshape(n, GRID, CELL, GRID, CELL).transpose(0, 1, 3, 2, 4).reshape(n, GRID * GRID, CELL * CELL)
    level = np.partition(cells, -TOP_PIXELS, axis=-1)[..., -TOP_PIXELS:].mean(axis=-1)
    mask = cells >= 0.5 * level[..., None]
    present = (level >= MIN_LEVEL) & (mask.sum(axis=-1) >= MIN_PIXELS)
    norms = np.linalg.norm(cells, axis=-1, keepdims=True)
    cosine = np.einsum("ncp,svp->ncsv", cells / np.maximum(norms, 1e-6), _TEMPLATES).max(axis=-1)
    unexplained = 1.0 - np.clip(cosine, 0.0, 1.0) ** 2
    order = np.argsort(unexplained, axis=-1)
    best = np.take_along_axis(unexplained, order[..., :1], axis=-1)[..., 0]
    second = np.take_along_axis(unexplained, order[..., 1:2], axis=-1)[..., 0]
    confidence = np.clip(1.0 - best / np.maximum(second, 1e-6), 0.0, 1.0)
    return present, order[..., 0], confidence, mask.reshape(n, GRID * GRID, CELL, CELL)


class ShapesDetector:
    """Detects shapes-world objects cell by cell; every occupied cell yields one Detection with a full-image mask."""

    def detect(self, image: np.ndarray) -> list[Detection]:
        present, shape_index, confidence, masks = analyze_cells(image[None])
        return [cell_detection(int(cell), masks[0, cell], GRID, SHAPES[shape_index[0, cell]],
                               float(confidence[0, cell])) for cell in np.flatnonzero(present[0])]


def cell_detection(cell: int, cell_mask: np.ndarray, grid: int, label: str, score: float,
                   attributes: dict | None = None) -> Detection:
    """The Detection of grid cell `cell` (row-major) of a grid x grid world: its mask placed in the full image,
    and the mask's pixel box."""
    size = cell_mask.shape[0]
    row, col = divmod(cell, grid)
    mask = np.zeros((grid * size, grid * size), dtype=bool)
    mask[row * size : (row + 1) * size, col * size : (col + 1) * size] = cell_mask
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return Detection(label, box, score, mask, attributes or {})


class ShapesColorClassifier:
    """The candidate palette color nearest (RGB distance) to the mean color of the detection's mask (or box)."""

    def __init__(self, palette: dict[str, tuple[int, int, int]] | None = None):
        self.palette = dict(COLORS if palette is None else palette)

    def classify(self, image: np.ndarray, detection: Detection, candidates: Sequence[str]) -> str:
        unknown = [c for c in candidates if c not in self.palette]
        if unknown:
            raise ValueError(f"ShapesColorClassifier has no RGB for {unknown}; its palette is {sorted(self.palette)}")
        if detection.mask is not None:
            pixels = image[detection.mask]
        else:
            x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
            pixels = image[y1:y2, x1:x2].reshape(-1, 3)
        mean = pixels.reshape(-1, 3).astype(np.float64).mean(axis=0)
        distances = [np.linalg.norm(mean - np.asarray(self.palette[c], dtype=np.float64)) for c in candidates]
        return candidates[int(np.argmin(distances))]
