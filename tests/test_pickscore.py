"""PickScore on a tiny CLIP built locally (tokenizer, image processor and weights made offline) against a hand
computation of logit_scale.exp() * cosine / 26."""

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_clip
from transformers import CLIPModel, CLIPProcessor

from diffrl.rewards.base import build_reward


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_pickscore_matches_hand_computation(tiny_clip):
    reward = build_reward("pickscore", path=str(tiny_clip), batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    prompts = ["a red cat", "two dogs on grass", "x"]
    scores = reward(images, prompts, [{}] * 3).scores

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        text = processor(text=prompts, padding=True, return_tensors="pt")
        image_embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text_embeds = model.text_projection(model.text_model(**text).pooler_output)
    cosine = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
    expected = (np.exp(4.0) * cosine / 26.0).tolist()
    assert scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len(set(round(s, 6) for s in scores)) == 3


def test_pickscore_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pickscore: path .* is not a local directory"):
        build_reward("pickscore", path=str(tmp_path / "PickScore_v1"))
