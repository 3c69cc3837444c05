"""The built-in rewards, registered by name for job files (imported by `build_reward` and `known_rewards`)."""

from __future__ import annotations

from diffrl.models.shapes_world import COLORS
from diffrl.rewards.base import register_reward
from diffrl.rewards.geneval import GenEvalReward
from diffrl.rewards.shapes_detector import ShapesColorClassifier, ShapesDetector


@register_reward("geneval_shapes")
def geneval_shapes(score: str = "partial") -> GenEvalReward:
    """GenEval's rules on the shapes world: the exact per-cell detector, colors classified among the world's palette.
    `score`: "partial" (Flow-GRPO's partial credit) or "strict" as the training signal."""
    return GenEvalReward(ShapesDetector(), ShapesColorClassifier(), colors=tuple(COLORS), score=score)
