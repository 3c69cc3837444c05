"""The scenes world's learned preference reward (`scenes_preference`): the project's own PickScore-like dual encoder
(`diffrl.models.preference`), trained contrastively with one-attribute hard negatives by
`configs/pretrain_scenes_pref.yaml`. The score is the cosine of the image and caption embeddings, in [-1, 1]:
continuous, with room above a typical sample (a ground-truth render of the caption scores near the top)."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from diffrl.rewards.base import RewardOutput


@lru_cache(maxsize=1)
def _scenes_words() -> frozenset[str]:
    from diffrl.envs.scenes import all_prompts
    from diffrl.models.preference import caption_vocabulary

    return frozenset(caption_vocabulary([p["prompt"] for p in all_prompts()]))


def preference_prompt_problem(entry: dict) -> str | None:
    """The reward reads the scenes world's captions: a word outside them would be read as unknown."""
    from diffrl.models.preference import DEFAULT_CONFIG, words

    caption = entry.get("prompt", "")
    unknown = sorted(set(words(caption)) - _scenes_words())
    if unknown:
        return f"prompt {caption!r} has words the scenes preference model never read: {unknown}"
    if len(words(caption)) > DEFAULT_CONFIG["max_words"]:
        return f"prompt {caption!r} is longer than {DEFAULT_CONFIG['max_words']} words"
    return None


class PreferenceReward:
    def __init__(self, path: str = "builtin:scenes_pref", batch_size: int = 256, device: str | None = None) -> None:
        import torch

        from diffrl.models.preference import PreferenceModel

        if batch_size < 1:
            raise ValueError(f"scenes_preference: batch_size must be >= 1, got {batch_size}")
        self.model = PreferenceModel.from_pretrained(path).requires_grad_(False)
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.image_size = self.model.config["image_size"]

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"scenes_preference expects uint8 images [N, H, W, 3], got {images.dtype} "
                             f"{tuple(images.shape)}")
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"scenes_preference reads {self.image_size}x{self.image_size} images (the scenes "
                             f"world), got {images.shape[1]}x{images.shape[2]}")
        return RewardOutput(scores=self.model.score(images, list(prompts), self.batch_size).astype(float).tolist())
