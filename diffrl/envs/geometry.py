"""GenEval's position rule, shared by the shapes world (which lays scenes out so that it holds) and the GenEval
reward (which checks it). From djghosh13/geneval `evaluation/evaluate_images.py` (`relative_position`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

POSITION_THRESHOLD = 0.1


def relative_position(box_a: Sequence[float], box_b: Sequence[float]) -> set[str]:
    """Relations of box A to box B as GenEval computes them (image y grows downward).

    The center offset is shrunk per axis by 0.1 * (width_a + width_b) (heights for y); if nothing is left there is
    no relation. Otherwise the shrunk offset is divided by the norm of the raw offset and each axis with |d| > 0.5
    gives a relation, so a diagonal neighbour can be both "left of" and "above".
    """
    boxes = np.asarray([box_a[:4], box_b[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=1)
    dim_a, dim_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations
