"""GenEval decision rules on hand-built detections: score (Flow-GRPO partial credit), strict and correct."""

from __future__ import annotations

import numpy as np
import pytest

from diffrl.rewards.base import validate_reward_output
from diffrl.rewards.geneval import Detection, GenEvalReward, evaluate_geneval, group_detections, relative_position

IMAGE = np.zeros((30, 30, 3), dtype=np.uint8)


def box(col: int, row: int) -> tuple[float, float, float, float]:
    """An 8x8 box in a 10 px grid cell."""
    return (10.0 * col + 1, 10.0 * row + 1, 10.0 * col + 9, 10.0 * row + 9)


class BoxColors:
    """A stub color classifier: the color of a detection is looked up by its box; records the candidates."""

    def __init__(self, colors: dict | None = None):
        self.colors = colors or {}
        self.candidates: list = []

    def classify(self, image, detection, candidates):
        self.candidates.append(tuple(candidates))
        return self.colors[detection.box]


def run(detections, metadata, colors=None):
    return evaluate_geneval(detections, metadata, IMAGE, BoxColors(colors), colors=("red", "green", "blue"))


def circle(col=0, row=0, score=1.0):
    return Detection("circle", box(col, row), score)


def square(col=1, row=0, score=1.0):
    return Detection("square", box(col, row), score)


SINGLE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
TWO = {
    "tag": "two_object",
    "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
    "prompt": "a photo of a circle and a square",
}
COUNT3 = {
    "tag": "counting",
    "include": [{"class": "circle", "count": 3}],
    "exclude": [{"class": "circle", "count": 4}],
    "prompt": "a photo of three circles",
}
COLOR = {
    "tag": "colors",
    "include": [{"class": "circle", "count": 1, "color": "red"}],
    "prompt": "a photo of a red circle",
}
POSITION = {
    "tag": "position",
    "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
    "prompt": "a photo of a circle left of a square",
}
COLOR_ATTR = {
    "tag": "color_attr",
    "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}],
    "prompt": "a photo of a red circle and a blue square",
}


def check(result, score, strict, correct):
    assert result.score == pytest.approx(score)
    assert (result.strict, result.correct) == (strict, correct), result.reason
    assert (result.reason == "ok") == (strict == 1.0)


def test_single_object():
    check(run([circle()], SINGLE), 1.0, 1.0, 1.0)
    check(run([], SINGLE), 0.0, 0.0, 0.0)
    check(run([square()], SINGLE), 0.0, 0.0, 0.0)
    # Three circles for one: count term 1 - |1 - 3| / 1 = -1; GenEval's original rule (>= n) still calls it correct.
    check(run([circle(0), circle(1), circle(2)], SINGLE), -1.0, 0.0, 1.0)


def test_threshold_is_strictly_above_0_3():
    check(run([circle(score=0.3)], SINGLE), 0.0, 0.0, 0.0)
    check(run([circle(score=0.31)], SINGLE), 1.0, 1.0, 1.0)


def test_two_object():
    check(run([circle(), square()], TWO), 1.0, 1.0, 1.0)
    check(run([circle()], TWO), 0.5, 0.0, 0.0)
    check(run([circle(0), square(1), square(2)], TWO), 0.5, 0.0, 1.0)


def test_counting_uses_threshold_0_9_and_exclude():
    three = [circle(0, score=0.95), circle(1, score=0.95), circle(2, score=0.95)]
    check(run(three, COUNT3), 1.0, 1.0, 1.0)
    # A 0.8 circle does not count for the counting tag ...
    check(run(three[:2] + [circle(2, score=0.8)], COUNT3), 1 - 1 / 3, 0.0, 0.0)
    check(run(three + [circle(0, 1, score=0.8)], COUNT3), 1.0, 1.0, 1.0)
    # ... but the same detections count under any other tag (threshold 0.3).
    as_other_tag = dict(COUNT3, tag="two_object")
    check(run(three + [circle(0, 1, score=0.8)], as_other_tag), 1 - 1 / 3, 0.0, 0.0)
    # Four circles: >= 3 holds, but the exclude clause (count 4) fails the original verdict.
    four = three + [circle(0, 1, score=0.95)]
    check(run(four, COUNT3), 1 - 1 / 3, 0.0, 0.0)


def test_at_most_16_detections_per_class_and_negative_credit():
    many = [Detection("circle", (float(i), 0.0, i + 1.0, 1.0), 0.5 + i / 100) for i in range(20)]
    groups = group_detections(many, "single_object")
    assert len(groups["circle"]) == 16
    assert [d.score for d in groups["circle"]] == sorted((d.score for d in many), reverse=True)[:16]
    check(run(many, SINGLE), 1 - 15, 0.0, 1.0)


def test_colors():
    check(run([circle()], COLOR, {box(0, 0): "red"}), 1.0, 1.0, 1.0)
    check(run([circle()], COLOR, {box(0, 0): "blue"}), 0.5, 0.0, 0.0)
    check(run([], COLOR), 0.0, 0.0, 0.0)
    # Two circles, the more confident one red: counts are off (0 + 0) but the original rule checks only the best one.
    two = [circle(0, score=0.9), circle(1, score=0.5)]
    check(run(two, COLOR, {box(0, 0): "red", box(1, 0): "blue"}), 0.0, 0.0, 1.0)
    check(run(two, COLOR, {box(0, 0): "blue", box(1, 0): "red"}), 0.0, 0.0, 0.0)


def test_color_candidates_are_passed_through():
    classifier = BoxColors({box(0, 0): "red"})
    evaluate_geneval([circle()], COLOR, IMAGE, classifier, colors=("red", "green", "blue"))
    assert classifier.candidates and set(classifier.candidates) == {("red", "green", "blue")}


def test_position():
    check(run([circle(0, 0), square(1, 0)], POSITION), 1.0, 1.0, 1.0)
    # Wrong side: upstream appends 0 then 1 for the failed relation -> (1 + 1 + 0 + 1) / 4.
    check(run([circle(2, 0), square(1, 0)], POSITION), 0.75, 0.0, 0.0)
    # Diagonal neighbour is both "left of" and "above".
    check(run([circle(0, 0), square(1, 1)], POSITION), 1.0, 1.0, 1.0)
    # A missing target: (0) for the square, then (1, 0) for the circle with no target.
    check(run([circle(0, 0)], POSITION), 1 / 3, 0.0, 0.0)
    check(run([square(1, 0)], POSITION), 1 / 3, 0.0, 0.0)


def test_relative_position():
    assert relative_position(box(0, 0), box(1, 0)) == {"left of"}
    assert relative_position(box(2, 1), box(1, 1)) == {"right of"}
    assert relative_position(box(1, 0), box(1, 2)) == {"above"}
    assert relative_position(box(1, 2), box(1, 1)) == {"below"}
    assert relative_position(box(0, 0), box(1, 1)) == {"left of", "above"}
    assert relative_position(box(2, 1), box(0, 0)) == {"right of"}  # dy = (10 - 1.6) / |(20, 10)| < 0.5
    assert relative_position(box(1, 1), box(1, 1)) == set()
    # Centers 1.5 px apart, less than the 0.1 * (8 + 8) = 1.6 px shrink: nothing is left, so no relation.
    assert relative_position((0, 0, 8, 8), (1.5, 0, 9.5, 8)) == set()


def test_color_attr():
    colors = {box(0, 0): "red", box(1, 0): "blue"}
    check(run([circle(0), square(1)], COLOR_ATTR, colors), 1.0, 1.0, 1.0)
    swapped = {box(0, 0): "blue", box(1, 0): "red"}
    check(run([circle(0), square(1)], COLOR_ATTR, swapped), 0.5, 0.0, 0.0)
    check(run([circle(0)], COLOR_ATTR, colors), 0.5, 0.0, 0.0)


def test_position_target_must_be_an_earlier_clause():
    bad = {"tag": "position", "include": [{"class": "circle", "count": 1, "position": ["left of", 0]}], "prompt": "x"}
    with pytest.raises(ValueError, match="position target"):
        run([circle()], bad)


class FixedDetector:
    def __init__(self, detections):
        self.detections = detections

    def detect(self, image):
        return self.detections


def test_reward_output_is_valid_and_checks_inputs():
    reward = GenEvalReward(FixedDetector([circle()]), BoxColors({box(0, 0): "red"}), colors=("red", "blue"))
    images = np.zeros((2, 30, 30, 3), dtype=np.uint8)
    out = validate_reward_output("geneval", reward(images, ["a", "b"], [SINGLE, COLOR]), 2)
    assert out.scores == [1.0, 1.0]
    assert out.details == {"partial": [1.0, 1.0], "strict": [1.0, 1.0], "correct": [1.0, 1.0],
                           "tag": ["single_object", "colors"]}
    # A wrong color: partial credit trains by default, the strict score can be chosen instead.
    wrong = GenEvalReward(FixedDetector([circle()]), BoxColors({box(0, 0): "blue"}), colors=("red", "blue"))
    assert wrong(images[:1], ["a"], [COLOR]).scores == [0.5]
    strict = GenEvalReward(FixedDetector([circle()]), BoxColors({box(0, 0): "blue"}), colors=("red", "blue"),
                           score="strict")
    assert strict(images[:1], ["a"], [COLOR]).scores == [0.0]
    with pytest.raises(ValueError, match="'partial' or 'strict'"):
        GenEvalReward(FixedDetector([]), BoxColors({}), score="best")
    with pytest.raises(ValueError, match="uint8"):
        reward(images.astype(np.float32), ["a", "b"], [SINGLE, COLOR])
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        reward(images, ["a"], [SINGLE, COLOR])
