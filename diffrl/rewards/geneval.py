"""GenEval's decision rules behind a pluggable detector and color classifier.

Two upstream sources, reimplemented here:
- djghosh13/geneval `evaluation/evaluate_images.py`: detection filtering (confidence > 0.3, > 0.9 for the counting
  tag, at most 16 per class by score), `relative_position`, and the original `evaluate` ("correct": at least n
  objects per include clause, color and position checked on the n most confident ones, exclude clauses fail it).
- Flow-GRPO's reward server (scxue/advantage_weighted_matching `reward-server/reward_server/gen_eval.py`, from
  yifan123/flow_grpo): `evaluate_reward`, the partial-credit training score and the strict (exact-count) verdict.

One extension, for the scenes world (`diffrl.envs.scenes`): a clause's "size" is checked like its color, from the
detection's `attributes["size"]`.

Upstream runs non-maximum suppression with max_overlap = 1.0, which keeps every box, so there is none here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from diffrl.envs.geometry import relative_position
from diffrl.rewards.base import RewardOutput

GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16


@dataclass
class Detection:
    """One detected object: class label, pixel box (x1, y1, x2, y2) with x2/y2 exclusive, confidence, optional mask,
    and what else the detector tells (`attributes`, e.g. {"size": "small"} in the scenes world)."""

    label: str
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None
    attributes: dict = field(default_factory=dict)


def size_of(det: Detection) -> str:
    """A detection's size class; a clause with a "size" needs a detector that reports one (the scenes world's)."""
    if "size" not in det.attributes:
        raise ValueError("a GenEval clause asks for a size, but the detector reports none (the scenes world's does)")
    return det.attributes["size"]


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Detection]: ...


class ColorClassifier(Protocol):
    def classify(self, image: np.ndarray, detection: Detection, candidates: Sequence[str]) -> str: ...


@dataclass
class GenEvalResult:
    """`score`: Flow-GRPO partial credit (training signal); `strict`: exact counts and all clauses; `correct`:
    original GenEval verdict; `reason`: why it failed ("ok" otherwise)."""

    score: float
    strict: float
    correct: float
    reason: str


def group_detections(detections: Sequence[Detection], tag: str) -> dict[str, list[Detection]]:
    """Per class, the detections scoring strictly above the tag's threshold, best first, at most 16."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    groups: dict[str, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -d.score):
        if det.score > threshold and len(groups.setdefault(det.label, [])) < MAX_OBJECTS:
            groups[det.label].append(det)
    return {label: dets for label, dets in groups.items() if dets}


def _position_target(req: dict, index: int) -> tuple[str, int]:
    relation, target = req["position"]
    if not 0 <= target < index:
        raise ValueError(f"include clause {index} has position target {target}; it must name an earlier clause")
    return relation, target


def geneval_prompt_problem(entry: dict) -> str | None:
    """What a prompt entry lacks for GenEval (None when nothing): a string "tag" and a non-empty "include" list of
    clauses, each with a string "class" and a positive int "count", a string "color" if any, and a "position"
    [relation, index of an earlier clause] if any; "exclude" clauses need "class" and "count" too."""
    if not isinstance(entry.get("tag"), str):
        return "GenEval needs a string 'tag' (e.g. counting, colors, position)"
    include = entry.get("include")
    if not isinstance(include, list) or not include:
        return "GenEval needs a non-empty 'include' list of clauses"
    for key in ("include", "exclude"):
        clauses = entry.get(key) or []
        if not isinstance(clauses, list):
            return f"'{key}' must be a list of clauses, got {type(clauses).__name__}"
        for index, clause in enumerate(clauses):
            if not isinstance(clause, dict) or not isinstance(clause.get("class"), str):
                return f"{key}[{index}] needs a string 'class'"
            count = clause.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                return f"{key}[{index}] needs a positive int 'count', got {count!r}"
            for attribute in ("color", "size"):
                if attribute in clause and not isinstance(clause[attribute], str):
                    return f"{key}[{index}].{attribute} must be a string"
            if "position" in clause:
                position = clause["position"]
                if (not isinstance(position, list) or len(position) != 2 or not isinstance(position[0], str)
                        or not isinstance(position[1], int) or not 0 <= position[1] < index):
                    return f"{key}[{index}].position must be [relation, index of an earlier clause], got {position!r}"
    return None


def _first_failed_relation(group: list[Detection], targets: list[Detection], relation: str) -> set[str] | None:
    """The relations found for the first (object, target) pair that lacks `relation`, or None if every pair has it."""
    for obj in group:
        for target in targets:
            found = relative_position(obj.box, target.box)
            if relation not in found:
                return found
    return None


def _strict_and_score(groups: dict, metadata: dict, color_of: Callable[[Detection], str]) -> tuple[bool, float, list]:
    """Flow-GRPO's evaluate_reward: one credit term per clause part, averaged; strict needs exact counts.

    Per include clause with count n and f detections: the count term 1 - |n - f| / n (negative beyond 2n). If f != n
    a clause with color, size or position adds one 0. Otherwise a color clause adds 1 - |n - k| / n with k the
    objects of that color, and a size clause (the scenes world's extension) the same with k the objects of that size; a position clause adds 0 when its target clause failed, and else 1, preceded by a 0 when some pair
    lacks the relation (upstream appends its 1 after the pair loop even on failure, so a wrong relation with right
    counts still earns 3/4 on a two-clause prompt). Exclude clauses are not read, as upstream: in GenEval's catalog
    exact counts imply them.
    """
    strict, credits, reasons, matched = True, [], [], []
    for index, req in enumerate(metadata.get("include", [])):
        name, n = req["class"], req["count"]
        found = groups.get(name, [])
        credits.append(1 - abs(n - len(found)) / n)
        ok = len(found) == n
        if not ok:
            reasons.append(f"expected {name}=={n}, found {len(found)}")
            if "color" in req or "size" in req or "position" in req:
                credits.append(0.0)
        else:
            for attribute, value_of in (("color", color_of), ("size", size_of)):
                if attribute in req:
                    k = sum(value_of(det) == req[attribute] for det in found)
                    credits.append(1 - abs(n - k) / n)
                    if k != n:
                        ok = False
                        reasons.append(f"expected {req[attribute]} {name}=={n}, found {k}")
            if "position" in req and ok:
                relation, target = _position_target(req, index)
                if matched[target] is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {relation}")
                    credits.append(0.0)
                else:
                    wrong = _first_failed_relation(found, matched[target], relation)
                    if wrong is not None:
                        ok = False
                        found_relations = " and ".join(sorted(wrong)) or "no relation"
                        reasons.append(f"expected {name} {relation} target, found {found_relations}")
                        credits.append(0.0)
                    credits.append(1.0)
        strict = strict and ok
        matched.append(found if ok else None)
    score = sum(credits) / len(credits) if credits else 0.0
    return strict, score, reasons


def _correct(groups: dict, metadata: dict, color_of: Callable[[Detection], str]) -> bool:
    """Original GenEval evaluate: >= n per include clause (checks on the n best), and no exclude clause reached."""
    correct, matched = True, []
    for index, req in enumerate(metadata.get("include", [])):
        n = req["count"]
        found = groups.get(req["class"], [])[:n]
        ok = len(found) >= n
        for attribute, value_of in (("color", color_of), ("size", size_of)):
            if ok and attribute in req:
                ok = sum(value_of(det) == req[attribute] for det in found) >= n
        if ok and "position" in req:
            relation, target = _position_target(req, index)
            ok = matched[target] is not None and _first_failed_relation(found, matched[target], relation) is None
        correct = correct and ok
        matched.append(found if ok else None)
    for req in metadata.get("exclude", []):
        if len(groups.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def evaluate_geneval(
    detections: list[Detection],
    metadata: dict,
    image: np.ndarray,
    color_classifier: ColorClassifier,
    colors: Sequence[str] = GENEVAL_COLORS,
) -> GenEvalResult:
    """Score one image's detections against its GenEval metadata; colors are classified among `colors`."""
    groups = group_detections(detections, metadata["tag"])
    color_cache: dict[int, str] = {}

    def color_of(det: Detection) -> str:
        if id(det) not in color_cache:
            color_cache[id(det)] = color_classifier.classify(image, det, colors)
        return color_cache[id(det)]

    strict, score, reasons = _strict_and_score(groups, metadata, color_of)
    correct = _correct(groups, metadata, color_of)
    reason = "; ".join(reasons) or "ok"
    return GenEvalResult(score=float(score), strict=float(strict), correct=float(correct), reason=reason)


class GenEvalReward:
    """The GenEval reward. `score` picks the training signal: "partial" (Flow-GRPO's partial credit) or "strict"
    (1 when every clause holds exactly); details always hold partial, strict, correct and tag per image."""

    def __init__(
        self,
        detector: Detector,
        color_classifier: ColorClassifier,
        colors: Sequence[str] = GENEVAL_COLORS,
        score: str = "partial",
    ):
        if score not in ("partial", "strict"):
            raise ValueError(f"geneval score must be 'partial' or 'strict', got {score!r}")
        self.detector = detector
        self.color_classifier = color_classifier
        self.colors = tuple(colors)
        self.score = score

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"geneval expects uint8 images [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        if not len(images) == len(prompts) == len(metadata):
            raise ValueError(f"geneval got {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
        results = [
            evaluate_geneval(self.detector.detect(image), meta, image, self.color_classifier, self.colors)
            for image, meta in zip(images, metadata)
        ]
        return RewardOutput(
            scores=[r.strict if self.score == "strict" else r.score for r in results],
            details={
                "partial": [r.score for r in results],
                "strict": [r.strict for r in results],
                "correct": [r.correct for r in results],
                "tag": [meta["tag"] for meta in metadata],
            },
        )
