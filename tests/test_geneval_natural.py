"""GenEval for natural images: Mask2Former and CLIP backends loaded from local directories (tiny random models built
offline) feed the same rules; the color classifier follows GenEval's masked crop and three templates."""

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_clip, build_tiny_mask2former

from diffrl.rewards.base import RewardError, build_reward
from diffrl.rewards.geneval import GENEVAL_COLORS, Detection, evaluate_geneval
from diffrl.rewards.geneval_natural import ClipColorClassifier, Mask2FormerDetector


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval_models")
    return build_tiny_mask2former(root / "mask2former"), build_tiny_clip(root / "clip")


def test_color_classifier_uses_masked_crop_and_three_templates(dirs):
    clf = ClipColorClassifier(str(dirs[1]))
    image = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 5:30] = True
    mask[12, 5] = False
    det = Detection("cat", (5.0, 10.0, 30.0, 20.0), 0.9, mask)
    crop = clf.masked_crop(image, det)
    assert crop.shape == (10, 25, 3) and tuple(crop[2, 0]) == (153, 153, 153)
    assert np.array_equal(crop[0, 0], image[10, 5])
    # Hand computation of the zero-shot classifier.
    model, processor = clf.model, clf.processor
    with torch.no_grad():
        weights = []
        for color in GENEVAL_COLORS:
            texts = [f"a photo of a {color} cat", f"a photo of a {color}-colored cat", f"a photo of a {color} object"]
            tokens = processor(text=texts, padding=True, return_tensors="pt")
            emb = model.text_projection(model.text_model(**tokens).pooler_output)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            weights.append(emb.mean(0) / emb.mean(0).norm())
        pixels = processor(images=[crop], return_tensors="pt")["pixel_values"]
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        img = img / img.norm(dim=-1, keepdim=True)
    expected = GENEVAL_COLORS[int((img @ torch.stack(weights).T).argmax())]
    assert clf.classify(image, det, GENEVAL_COLORS) == expected


def test_natural_geneval_reward_applies_the_rules_to_the_backends(dirs):
    reward = build_reward("geneval", detector_path=str(dirs[0]), clip_path=str(dirs[1]), score="partial")
    images = np.random.default_rng(1).integers(0, 256, size=(3, 48, 64, 3), dtype=np.uint8)
    metadata = [
        {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
        {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"},
        {"tag": "counting", "include": [{"class": "apple", "count": 2}], "prompt": "a photo of two apples"},
    ]
    out = reward(images, [m["prompt"] for m in metadata], metadata)
    assert len(out.scores) == 3 and all(np.isfinite(out.scores))
    detector = Mask2FormerDetector(str(dirs[0]))
    classifier = ClipColorClassifier(str(dirs[1]))
    for i, meta in enumerate(metadata):
        result = evaluate_geneval(detector.detect(images[i]), meta, images[i], classifier)
        assert out.scores[i] == result.score and out.details["strict"][i] == result.strict


def test_missing_model_directories_are_named(tmp_path, dirs):
    with pytest.raises(RewardError, match="reward 'geneval': building it failed: .*detector_path .* is not a local "
                                          "directory"):
        build_reward("geneval", detector_path=str(tmp_path / "m2f"), clip_path=str(dirs[1]))
    with pytest.raises(RewardError, match="clip_path .* is not a local directory"):
        build_reward("geneval", detector_path=str(dirs[0]), clip_path=str(tmp_path / "clip"))
