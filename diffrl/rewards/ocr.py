"""Flow-GRPO's OCR reward (arXiv 2505.05470; yifan123/flow_grpo flow_grpo/ocr.py) with rapidocr-onnxruntime, whose detection and
recognition models ship inside its wheel (nothing is downloaded).

target = the text between the first pair of double quotes of the prompt; the recognized lines are joined; both are
lower-cased with spaces removed; distance = 0 when the target is a substring of the recognized text, else their
Levenshtein distance capped at len(target); reward = 1 - distance / len(target). An image where OCR finds nothing
counts as the maximum distance (reward 0). A prompt without a quoted target is an error naming the prompt.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from diffrl.rewards.base import RewardOutput

_QUOTED = re.compile(r'"([^"]*)"')


def ocr_target(prompt: str) -> str:
    match = _QUOTED.search(prompt)
    if match is None or not match.group(1).strip():
        raise ValueError(f"ocr: prompt has no target text between double quotes: {prompt!r}")
    return match.group(1)


def ocr_prompt_problem(entry: dict) -> str | None:
    """What a prompt entry lacks for OCR: target text between double quotes in its prompt."""
    try:
        ocr_target(str(entry.get("prompt") or ""))
    except ValueError:
        return "OCR needs the target text between double quotes"
    return None


def _normalize(text: str) -> str:
    return text.replace(" ", "").lower()


def ocr_reward_value(recognized: str, target: str) -> float:
    """1 - min(distance, len(target)) / len(target) on normalized text; substring matches score 1."""
    import Levenshtein

    recognized, target = _normalize(recognized), _normalize(target)
    if not target:
        raise ValueError("ocr: empty target text")
    distance = 0 if target in recognized else min(Levenshtein.distance(recognized, target), len(target))
    return 1.0 - distance / len(target)


class OcrReward:
    """Batched OCR reward; details hold the recognized text per image."""

    def __init__(self, use_angle_cls: bool = False) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR()
        self.use_angle_cls = use_angle_cls

    def recognize(self, image: np.ndarray) -> str:
        result, _ = self.engine(image[..., ::-1].copy(), use_cls=self.use_angle_cls)  # rapidocr expects BGR
        return "".join(line[1] for line in result) if result else ""

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"ocr expects uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        targets = [ocr_target(p) for p in prompts]
        texts = [self.recognize(image) for image in images]
        scores = [ocr_reward_value(text, target) for text, target in zip(texts, targets)]
        return RewardOutput(scores=scores, details={"text": texts})
