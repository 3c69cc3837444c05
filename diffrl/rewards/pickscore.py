"""PickScore (Kirstain et al., arXiv 2305.01569) as Flow-GRPO uses it (yifan123/flow_grpo flow_grpo/pickscore_scorer.py): CLIP image and text
embeddings, L2-normalized, score = logit_scale.exp() * cosine / 26. The CLIP model and its processor load from a
local directory (PickScore_v1 and its CLIP-H processor downloaded beforehand); nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffrl.rewards.base import RewardOutput

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tensor(output) -> torch.Tensor:
    """transformers 5 returns output objects from get_*_features; older versions return tensors."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find embeddings in {type(output).__name__}")


class PickScoreReward:
    def __init__(self, path: str, processor_path: str | None = None, dtype: str = "fp32", batch_size: int = 16,
                 device: str | None = None) -> None:
        from transformers import AutoModel, AutoProcessor

        for label, value in (("path", path), ("processor_path", processor_path or path)):
            if not Path(value).is_dir():
                raise FileNotFoundError(f"pickscore: {label} {value!r} is not a local directory (diffrl never "
                                        "downloads; fetch PickScore_v1 and its processor beforehand)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        self.processor = AutoProcessor.from_pretrained(processor_path or path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=self.dtype).to(self.device)
        self.model.eval().requires_grad_(False)
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, images: np.ndarray, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        text = self.processor(text=list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_embeds = _tensor(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
        text_embeds = _tensor(self.model.get_text_features(
            input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)))
        return image_embeds.float(), text_embeds.float()

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            image_embeds, text_embeds = self.embed(images[start : start + self.batch_size],
                                                   prompts[start : start + self.batch_size])
            image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
            text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
            logits = self.model.logit_scale.exp().float() * (image_embeds * text_embeds).sum(-1)
            scores += (logits / 26.0).tolist()
        return RewardOutput(scores=scores)
