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


def _set_mask2former_to_one_full_image_detection(directory, label_id: int, probability: float):
    """Weights set so the detector's answer is known without running it: one query whose decoder output is a constant
    (the decoder's final layer norm has weight 0), a class head that gives class `label_id` softmax `probability`
    against "no object" (weight 0, biases log(p / (1 - p)) and 0, other classes -30), and mask logits that are +20
    everywhere (the pixel decoder's mask projection and the mask embedder's last layer have weight 0 and biases
    whose dot product is 20). The model then reports one object of that class covering the whole image with
    confidence p * sigmoid(20)."""
    import math

    from transformers import Mask2FormerForUniversalSegmentation

    model = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    with torch.no_grad():
        decoder = model.model.transformer_module.decoder
        decoder.layernorm.weight.zero_()
        projection = model.model.pixel_level_module.decoder.mask_projection
        projection.weight.zero_()
        projection.bias.fill_(1.0)
        last = decoder.mask_predictor.mask_embedder.layers[-1]
        linear = next(m for m in last.modules() if isinstance(m, torch.nn.Linear))
        linear.weight.zero_()
        linear.bias.fill_(20.0 / linear.bias.numel())
        model.class_predictor.weight.zero_()
        bias = torch.full_like(model.class_predictor.bias, -30.0)
        bias[label_id], bias[-1] = math.log(probability / (1 - probability)), 0.0
        model.class_predictor.bias.copy_(bias)
    model.save_pretrained(directory)


@pytest.mark.parametrize("probability", [0.95, 0.5])
def test_natural_geneval_known_answer_from_set_weights(tmp_path, dirs, probability):
    """The detector's output is fixed by its weights (one cat over the whole image, confidence p), so every score
    below follows by hand from GenEval's rules: thresholds 0.3 (0.9 for counting) and Flow-GRPO's partial credit."""
    directory = build_tiny_mask2former(tmp_path / "mask2former", labels=("cat", "dog", "apple"), num_queries=1)
    _set_mask2former_to_one_full_image_detection(directory, label_id=0, probability=probability)
    images = np.random.default_rng(2).integers(0, 256, size=(6, 48, 64, 3), dtype=np.uint8)

    detections = Mask2FormerDetector(str(directory)).detect(images[0])
    assert [(d.label, d.box) for d in detections] == [("cat", (0.0, 0.0, 64.0, 48.0))]
    assert detections[0].score == pytest.approx(probability, abs=1e-6) and detections[0].mask.all()

    cat, dog = {"class": "cat", "count": 1}, {"class": "dog", "count": 1}
    metadata = [
        {"tag": "single_object", "include": [cat], "prompt": "a photo of a cat"},
        {"tag": "single_object", "include": [dog], "prompt": "a photo of a dog"},
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "a photo of two cats"},
        {"tag": "counting", "include": [cat], "prompt": "a photo of one cat"},
        {"tag": "two_object", "include": [cat, dog], "prompt": "a photo of a cat and a dog"},
        {"tag": "position", "include": [cat, dict(dog, position=["right of", 0])],
         "prompt": "a photo of a dog right of a cat"},
    ]
    reward = build_reward("geneval", detector_path=str(directory), clip_path=str(dirs[1]), score="partial")
    out = reward(images, [m["prompt"] for m in metadata], metadata)
    counted = probability > 0.9  # the counting tag's threshold
    # single cat: found; single dog: none; two cats: 1 of 2 (1 - 1/2) or none; one cat: found only above 0.9;
    # cat and dog: credits 1 and 0; dog right of cat: credits 1 (cat), 0 (no dog) and 0 (its position unchecked).
    assert out.scores == pytest.approx([1.0, 0.0, 0.5 if counted else 0.0, 1.0 if counted else 0.0, 0.5, 1 / 3])
    assert out.details["strict"] == [1.0, 0.0, 0.0, 1.0 if counted else 0.0, 0.0, 0.0]
