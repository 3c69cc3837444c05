"""GenEval on natural images: a Mask2Former instance-segmentation detector and a CLIP zero-shot color classifier,
both loaded from local directories through transformers, feeding the same decision rules as the shapes world
(`diffrl.rewards.geneval`).

Following GenEval's evaluate_images.py (djghosh13/geneval): detections keep their confidence (the rules apply the
0.3 / 0.9 thresholds and at most 16 per class); a detection's color is classified on the object's pixels composited
onto a #999 gray background and cropped to its box, by CLIP zero-shot over GenEval's 10 colors with the three prompt
templates "a photo of a {color} {object}", "a photo of a {color}-colored {object}", "a photo of a {color} object"
(template embeddings normalized, averaged and normalized again, as clip_benchmark's zero_shot_classifier does).
Nothing is downloaded: both directories must exist locally (e.g. facebook/mask2former-swin-small-coco-instance and
openai/clip-vit-large-patch14 fetched beforehand).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffrl.rewards.geneval import GENEVAL_COLORS, Detection, GenEvalReward

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATES = ("a photo of a {color} {object}", "a photo of a {color}-colored {object}", "a photo of a {color} object")
BACKGROUND = (153, 153, 153)  # GenEval's default bgcolor "#999"


def _local_dir(path: str, what: str) -> str:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"geneval: {what} {path!r} is not a local directory (diffrl never downloads; fetch "
                                "the model beforehand)")
    return path


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class Mask2FormerDetector:
    """Instance segmentation with a transformers Mask2Former; class names come from the model's id2label."""

    def __init__(self, path: str, device: str | None = None, min_score: float = 0.05) -> None:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        _local_dir(path, "detector_path")
        self.device = _device(device)
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(path, local_files_only=True).to(self.device)
        self.model.eval().requires_grad_(False)
        self.labels = self.model.config.id2label
        self.min_score = min_score

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[Detection]:
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_instance_segmentation(
            outputs, threshold=self.min_score, target_sizes=[image.shape[:2]], return_binary_maps=True)[0]
        masks = result["segmentation"]
        detections = []
        for index, segment in enumerate(result["segments_info"]):
            mask = masks[index].cpu().numpy().astype(bool) if masks is not None and masks.ndim == 3 else None
            if mask is None or not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            detections.append(Detection(self.labels[int(segment["label_id"])], box, float(segment["score"]), mask))
        return detections


class ClipColorClassifier:
    """CLIP zero-shot color of a detection, with GenEval's masked crop and three templates."""

    def __init__(self, path: str, device: str | None = None) -> None:
        from transformers import CLIPModel, CLIPProcessor

        _local_dir(path, "clip_path")
        self.device = _device(device)
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(self.device).eval().requires_grad_(False)
        self._classifiers: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    @staticmethod
    def _embeddings(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def classifier(self, classname: str, colors: Sequence[str]) -> torch.Tensor:
        """[colors, dim]: per color, the normalized mean of its normalized template embeddings."""
        key = (classname, tuple(colors))
        if key not in self._classifiers:
            weights = []
            for color in colors:
                texts = [t.format(color=color, object=classname) for t in TEMPLATES]
                tokens = self.processor(text=texts, padding=True, return_tensors="pt").to(self.device)
                embeds = self._embeddings(self.model.get_text_features(**tokens)).float()
                embeds = embeds / embeds.norm(dim=-1, keepdim=True)
                mean = embeds.mean(dim=0)
                weights.append(mean / mean.norm())
            self._classifiers[key] = torch.stack(weights)
        return self._classifiers[key]

    @staticmethod
    def masked_crop(image: np.ndarray, detection: Detection) -> np.ndarray:
        """The object's pixels on gray, cropped to its box (the whole box when there is no mask)."""
        out = image
        if detection.mask is not None:
            out = np.where(detection.mask[..., None], image, np.array(BACKGROUND, dtype=np.uint8))
        x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
        return np.ascontiguousarray(out[y1:y2, x1:x2])

    @torch.no_grad()
    def classify(self, image: np.ndarray, detection: Detection, candidates: Sequence[str]) -> str:
        pixels = self.processor(images=[self.masked_crop(image, detection)], return_tensors="pt")["pixel_values"]
        embed = self._embeddings(self.model.get_image_features(pixel_values=pixels.to(self.device))).float()
        embed = embed / embed.norm(dim=-1, keepdim=True)
        logits = embed @ self.classifier(detection.label, candidates).T
        return candidates[int(logits.argmax())]


def geneval_natural(detector_path: str, clip_path: str, score: str = "partial", device: str | None = None,
                    colors: Sequence[str] = GENEVAL_COLORS) -> GenEvalReward:
    """GenEval for real images: Mask2Former detector + CLIP colors from local directories, GenEval's rules."""
    return GenEvalReward(Mask2FormerDetector(detector_path, device), ClipColorClassifier(clip_path, device),
                         colors=colors, score=score)
