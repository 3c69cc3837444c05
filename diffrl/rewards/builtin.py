"""The built-in rewards, registered by name for job files (imported by `build_reward` and `known_rewards`)."""

from __future__ import annotations

from diffrl.envs.shapes import COLORS
from diffrl.envs.worlds import LABELS
from diffrl.rewards.base import register_reward
from diffrl.rewards.ocr import ocr_prompt_problem
from diffrl.rewards.preference import preference_prompt_problem
from diffrl.rewards.geneval import GenEvalReward, geneval_prompt_problem
from diffrl.rewards.shapes_detector import ShapesColorClassifier, ShapesDetector


@register_reward("geneval_shapes", prompt_check=geneval_prompt_problem, headline=("strict", LABELS["shapes"]))
def geneval_shapes(score: str = "partial") -> GenEvalReward:
    """GenEval's rules on the shapes world: the exact per-cell detector, colors classified among the world's palette.
    `score`: "partial" (Flow-GRPO's partial credit) or "strict" as the training signal."""
    return GenEvalReward(ShapesDetector(), ShapesColorClassifier(), colors=tuple(COLORS), score=score)


@register_reward("geneval_scenes", prompt_check=geneval_prompt_problem, headline=("strict", LABELS["scenes"]))
def geneval_scenes(score: str = "partial") -> GenEvalReward:
    """GenEval's rules (with the size extension) on the scenes world: the exact per-cell detector of its five shapes
    and two sizes, colors classified among its palette. `score`: "partial" or "strict" as the training signal."""
    from diffrl.envs.scenes import COLORS as SCENE_COLORS
    from diffrl.rewards.scenes_detector import ScenesDetector, scenes_color_classifier

    return GenEvalReward(ScenesDetector(), scenes_color_classifier(), colors=tuple(SCENE_COLORS), score=score)


@register_reward("scenes_preference", prompt_check=preference_prompt_problem, paths=("path",))
def scenes_preference(path: str = "builtin:scenes_pref", batch_size: int = 256):
    """The scenes world's learned preference reward (diffrl.rewards.preference): a PickScore-like dual encoder the
    project trains itself; `path`: builtin:scenes_pref (shipped) or a directory a preference pretraining wrote."""
    from diffrl.rewards.preference import PreferenceReward

    return PreferenceReward(path, batch_size)


class JpegCompressibility:
    """DDPO's compressibility reward (Black et al., arXiv 2305.13301): minus the JPEG size in kB at quality 95, so
    simpler images score higher; `sign=-1` gives incompressibility. Works on any image size; details hold the kB."""

    def __init__(self, quality: int = 95, sign: float = 1.0) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg quality must be in [1, 100], got {quality}")
        self.quality, self.sign = quality, sign

    def __call__(self, images, prompts, metadata):
        import io

        import numpy as np
        from PIL import Image

        from diffrl.rewards.base import RewardOutput

        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"jpeg_compressibility expects uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        sizes = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000.0)
        return RewardOutput(scores=[-self.sign * kb for kb in sizes], details={"kb": sizes})


@register_reward("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95, sign: float = 1.0) -> JpegCompressibility:
    return JpegCompressibility(quality, sign)


@register_reward("ocr", prompt_check=ocr_prompt_problem)
def ocr(use_angle_cls: bool = False):
    """Flow-GRPO's OCR reward (rapidocr-onnxruntime, models inside its wheel); target text between double quotes."""
    from diffrl.rewards.ocr import OcrReward

    return OcrReward(use_angle_cls)


@register_reward("pickscore", paths=("path", "processor_path"))
def pickscore(path: str, processor_path: str | None = None, dtype: str = "fp32", batch_size: int = 16):
    """PickScore from a local CLIP directory: logit_scale.exp() * cosine / 26."""
    from diffrl.rewards.pickscore import PickScoreReward

    return PickScoreReward(path, processor_path, dtype, batch_size)


@register_reward("geneval", prompt_check=geneval_prompt_problem, paths=("detector_path", "clip_path"),
                 headline=("strict", "GenEval"))
def geneval(detector_path: str, clip_path: str, score: str = "partial", device: str | None = None):
    """GenEval for natural images: Mask2Former (instance segmentation) and CLIP colors from local directories."""
    from diffrl.rewards.geneval_natural import geneval_natural

    return geneval_natural(detector_path, clip_path, score, device)


@register_reward("vlm_judge", paths=("path",))
def vlm_judge(path: str, backend: str = "auto", question: str | None = None):
    """P(yes) of a vision-language judge asked whether the image shows the prompt (vLLM on GPUs, in replicas that
    run in a vLLM environment given by the reward's `python:`; transformers elsewhere)."""
    from diffrl.rewards.vlm_judge import QUESTION
    from diffrl.rewards.vlm_judge import vlm_judge as build

    return build(path, backend, question or QUESTION)


@register_reward("exact_match")
def exact_match():
    """Text completions: 1 when equal to the metadata's reference (stripped), else 0."""
    from diffrl.rewards.text import ExactMatch

    return ExactMatch()


@register_reward("char_accuracy")
def char_accuracy():
    """Text completions: the share of the reference's characters matched position by position (partial credit)."""
    from diffrl.rewards.text import CharAccuracy

    return CharAccuracy()
