"""PickScore on a tiny CLIP built locally (tokenizer, image processor and weights made offline) against a hand
computation of logit_scale.exp() * cosine / 26."""

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_clip
from transformers import CLIPModel, CLIPProcessor

from diffrl.rewards.base import RewardError, build_reward


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
    with pytest.raises(RewardError, match="reward 'pickscore': building it failed: FileNotFoundError: pickscore: "
                                          "path .* is not a local directory"):
        build_reward("pickscore", path=str(tmp_path / "PickScore_v1"))


@pytest.mark.parametrize("angle, expected", [(0.0, 1.0), (60.0, 0.5), (90.0, 0.0), (180.0, -1.0)])
def test_pickscore_known_answer_from_set_weights(tmp_path, angle, expected):
    """Weights set so that the answer is known without running CLIP: the towers' final layer norms have weight 0
    and biases b = e0 (vision) and c = cos(a) e0 + sin(a) e1 (text), the projections keep the first 16 dims, and
    logit_scale = log(26). Every image-prompt pair then scores exactly cos(a)."""
    import math

    directory = build_tiny_clip(tmp_path / "clip")
    model = CLIPModel.from_pretrained(directory)
    with torch.no_grad():
        for norm in (model.vision_model.post_layernorm, model.text_model.final_layer_norm):
            norm.weight.zero_()
        model.vision_model.post_layernorm.bias.copy_(torch.eye(32)[0])
        rad = math.radians(angle)
        model.text_model.final_layer_norm.bias.copy_(math.cos(rad) * torch.eye(32)[0] + math.sin(rad) * torch.eye(32)[1])
        for projection in (model.visual_projection, model.text_projection):
            projection.weight.copy_(torch.eye(16, 32))
        model.logit_scale.fill_(math.log(26.0))
    model.save_pretrained(directory)
    reward = build_reward("pickscore", path=str(directory), batch_size=2)
    images = np.random.default_rng(1).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    assert reward(images, ["a red cat", "two dogs", "x"], [{}] * 3).scores == pytest.approx([expected] * 3, abs=1e-5)
