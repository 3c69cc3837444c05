"""An exact classical detector for the scenes world (`diffrl.envs.scenes`), numpy only; the shapes world's detector
(`shapes_detector`) generalised to five shapes and two sizes on a 4x4 grid.

Per cell, vectorised over a batch:
- presence: the cell's level (mean of its TOP_PIXELS brightest pixels, brightness = max over RGB) is at least
  MIN_LEVEL and at least MIN_PIXELS pixels reach half that level (the mask; a small cross has 9 pixels);
- shape and size: cosine similarity of the cell's brightness with every (shape, size) template, each also shifted
  by up to 1 px and blurred; the best template gives the shape and the size;
- confidence: 1 - r_best / r_second over shapes (r = 1 - cos^2 of a shape's best template over both sizes), so a
  size mismatch never lowers the shape's confidence and a blob between two shapes scores near 0.
Colors are classified by `ShapesColorClassifier` with this world's palette.
"""

from __future__ import annotations

import numpy as np

from diffrl.envs.scenes import CELL, COLORS, GRID, IMAGE_SIZE, SHAPE_MASKS, SHAPES, SIZES
from diffrl.rewards.geneval import Detection
from diffrl.rewards.shapes_detector import (BLUR_SIGMAS, MAX_SHIFT, ShapesColorClassifier, _gaussian_blur,
                                            cell_detection)

MIN_LEVEL = 0.25
MIN_PIXELS = 6
TOP_PIXELS = 6
SIZE_NAMES = tuple(SIZES)


def _templates() -> np.ndarray:
    """Unit-norm templates [shape, size, variant, CELL*CELL]: every shape and size at every shift and blur."""
    out = []
    for shape in SHAPES:
        per_size = []
        for size in SIZE_NAMES:
            side = SIZES[size]
            margin = (CELL - side) // 2
            pad = CELL // 2
            variants = []
            for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
                for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                    frame = np.zeros((CELL + 2 * pad, CELL + 2 * pad))
                    y0, x0 = pad + margin + dy, pad + margin + dx
                    frame[y0:y0 + side, x0:x0 + side] = SHAPE_MASKS[shape, size]
                    for sigma in BLUR_SIGMAS:
                        cell = _gaussian_blur(frame, sigma)[pad:pad + CELL, pad:pad + CELL].ravel()
                        variants.append(cell / np.linalg.norm(cell))
            per_size.append(variants)
        out.append(per_size)
    return np.asarray(out, dtype=np.float32)


_TEMPLATES = _templates()


def analyze_cells(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image and cell: present [N,16] bool, shape [N,16] index into SHAPES, size [N,16] index into SIZES,
    confidence [N,16] and mask [N,16,CELL,CELL] bool."""
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"scenes detector expects images [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.shape}")
    n, cells_n = len(images), GRID * GRID
    brightness = images.max(axis=-1).astype(np.float32) / 255.0
    cells = brightness.reshape(n, GRID, CELL, GRID, CELL).transpose(0, 1, 3, 2, 4).reshape(n, cells_n, CELL * CELL)
    level = np.partition(cells, -TOP_PIXELS, axis=-1)[..., -TOP_PIXELS:].mean(axis=-1)
    mask = cells >= 0.5 * level[..., None]
    present = (level >= MIN_LEVEL) & (mask.sum(axis=-1) >= MIN_PIXELS)
    unit = cells / np.maximum(np.linalg.norm(cells, axis=-1, keepdims=True), 1e-6)
    cosine = np.einsum("ncp,szvp->ncszv", unit, _TEMPLATES).max(axis=-1)  # [N, cells, shape, size]
    unexplained = 1.0 - np.clip(cosine, 0.0, 1.0) ** 2
    per_shape = unexplained.min(axis=-1)  # a shape's best size
    order = np.argsort(per_shape, axis=-1)
    best_shape = order[..., 0]
    best = np.take_along_axis(per_shape, order[..., :1], axis=-1)[..., 0]
    second = np.take_along_axis(per_shape, order[..., 1:2], axis=-1)[..., 0]
    size = np.take_along_axis(unexplained, best_shape[..., None, None], axis=2)[:, :, 0].argmin(axis=-1)
    confidence = np.clip(1.0 - best / np.maximum(second, 1e-6), 0.0, 1.0)
    return {"present": present, "shape": best_shape, "size": size, "confidence": confidence,
            "mask": mask.reshape(n, cells_n, CELL, CELL)}


class ScenesDetector:
    """One Detection per occupied cell, with a full-image mask and its size in `attributes`."""

    def detect(self, image: np.ndarray) -> list[Detection]:
        cells = analyze_cells(image[None])
        return [cell_detection(int(cell), cells["mask"][0, cell], GRID, SHAPES[cells["shape"][0, cell]],
                               float(cells["confidence"][0, cell]), {"size": SIZE_NAMES[cells["size"][0, cell]]})
                for cell in np.flatnonzero(cells["present"][0])]


def scenes_color_classifier() -> ShapesColorClassifier:
    return ShapesColorClassifier(COLORS)
