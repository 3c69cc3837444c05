"""The shapes world (catalog, splits, renderer, scene sampler) and its detector against ground truth."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from diffrl.envs import shapes as world
from diffrl.rewards.base import build_reward, validate_reward_output
from diffrl.rewards.geneval import Detection, relative_position
from diffrl.rewards.shapes_detector import ShapesColorClassifier, ShapesDetector

N_RENDERS = 2000


def test_catalog_follows_geneval_format():
    prompts = world.all_prompts()
    assert Counter(p["tag"] for p in prompts) == {
        "single_object": 3, "two_object": 6, "counting": 9, "colors": 9, "position": 24, "color_attr": 36,
    }
    assert len({p["prompt"] for p in prompts}) == len(prompts)
    assert prompts == world.all_prompts()
    assert json.loads(json.dumps(prompts)) == prompts
    for p in prompts:
        clauses = ["include", "exclude"] if p["tag"] == "counting" else ["include"]
        assert list(p) == ["tag", *clauses, "prompt"]
    by_prompt = {p["prompt"]: p for p in prompts}
    assert by_prompt["a photo of a circle"]["include"] == [{"class": "circle", "count": 1}]
    assert by_prompt["a photo of three triangles"]["include"] == [{"class": "triangle", "count": 3}]
    assert by_prompt["a photo of three triangles"]["exclude"] == [{"class": "triangle", "count": 4}]
    assert by_prompt["a photo of a red circle"]["include"] == [{"class": "circle", "count": 1, "color": "red"}]
    assert by_prompt["a photo of a circle left of a square"]["include"] == [
        {"class": "square", "count": 1},
        {"class": "circle", "count": 1, "position": ["left of", 0]},
    ]
    assert by_prompt["a photo of a red circle and a blue square"]["include"] == [
        {"class": "circle", "count": 1, "color": "red"},
        {"class": "square", "count": 1, "color": "blue"},
    ]
    for p in prompts:
        if p["tag"] in ("two_object", "position", "color_attr"):
            assert p["include"][0]["class"] != p["include"][1]["class"]
        if p["tag"] == "color_attr":
            assert p["include"][0]["color"] != p["include"][1]["color"]


def test_splits_are_stratified_disjoint_and_deterministic():
    prompts = world.all_prompts()
    train, held_out = world.prompt_splits(0.25, seed=0)
    assert sorted(map(json.dumps, train + held_out)) == sorted(map(json.dumps, prompts))
    assert train == [p for p in prompts if p in train]
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}
    for tag in world.TAGS:
        n_train = sum(p["tag"] == tag for p in train)
        n_held = sum(p["tag"] == tag for p in held_out)
        assert n_train >= 1 and n_held >= 1
        assert n_held == max(1, round(0.25 * (n_train + n_held)))
    assert world.prompt_splits(0.25, seed=0) == (train, held_out)
    assert world.prompt_splits(0.25, seed=1) != (train, held_out)
    with pytest.raises(ValueError, match="heldout_fraction"):
        world.prompt_splits(1.0)


def test_render_draws_fixed_shapes_on_black():
    areas = {name: int(mask.sum()) for name, mask in world.SHAPE_MASKS.items()}
    assert areas == {"circle": 52, "square": 64, "triangle": 40}
    triangle = world.SHAPE_MASKS["triangle"]
    assert triangle[0].sum() == 2 and triangle[-1].all() and (triangle == triangle[:, ::-1]).all()
    image = world.render([world.ShapeObject("square", "green", 1, 2), world.ShapeObject("triangle", "blue", 2, 0)])
    assert image.shape == (30, 30, 3) and image.dtype == np.uint8
    assert (image[11:19, 21:29] == (0, 255, 0)).all()
    assert (image[28, 1:9] == (0, 0, 255)).all()
    assert (image.reshape(-1, 3) == 0).all(axis=1).sum() == 900 - 64 - 40
    with pytest.raises(ValueError, match="at most one object per cell"):
        world.render([world.ShapeObject("circle", "red", 0, 0), world.ShapeObject("square", "red", 0, 0)])
    with pytest.raises(ValueError, match="unknown color"):
        world.render([world.ShapeObject("circle", "orange", 0, 0)])


def scene_satisfies(metadata: dict, scene: list[world.ShapeObject]) -> bool:
    """Exact counts and colors per include clause, no extra objects, and every relation on the rendered boxes."""
    groups = [
        [o for o in scene if o.shape == req["class"] and req.get("color", o.color) == o.color]
        for req in metadata["include"]
    ]
    if [len(g) for g in groups] != [req["count"] for req in metadata["include"]] or sum(map(len, groups)) != len(scene):
        return False
    for req, group in zip(metadata["include"], groups):
        if "position" in req:
            relation, target = req["position"]
            boxes = [world.object_box(o) for o in groups[target]]
            if not all(relation in relative_position(world.object_box(o), b) for o in group for b in boxes):
                return False
    return True


@pytest.fixture(scope="module")
def held_out_scenes():
    _, held_out = world.prompt_splits()
    rng = np.random.default_rng(123)
    metadata = [held_out[i % len(held_out)] for i in range(N_RENDERS)]
    scenes = [world.sample_scene(m, rng) for m in metadata]
    return metadata, scenes, np.stack([world.render(s) for s in scenes])


def test_sample_scene_satisfies_metadata(held_out_scenes):
    metadata, scenes, _ = held_out_scenes
    assert all(scene_satisfies(m, s) for m, s in zip(metadata, scenes))
    rng = np.random.default_rng(0)
    for p in world.all_prompts():
        assert scene_satisfies(p, world.sample_scene(p, rng))
    first, again = (world.sample_scene(metadata[0], np.random.default_rng(5)) for _ in range(2))
    assert first == again
    with pytest.raises(ValueError, match="not a shape"):
        world.sample_scene({"tag": "single_object", "include": [{"class": "dog", "count": 1}]}, rng)


def blur(images: np.ndarray) -> np.ndarray:
    return uniform_filter(images.astype(np.float64), size=(1, 3, 3, 1), mode="constant").round().astype(np.uint8)


def add_noise(images: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(7).normal(0.0, 0.05 * 255, images.shape)
    return np.clip(images + noise, 0, 255).round().astype(np.uint8)


def dim(images: np.ndarray) -> np.ndarray:
    return (images * 0.8).round().astype(np.uint8)


def detect_all(images: np.ndarray) -> list[list[Detection]]:
    detector = ShapesDetector()
    return [detector.detect(image) for image in images]


@pytest.mark.parametrize("perturb", [None, add_noise, blur, dim], ids=["clean", "noise", "blur", "dim"])
def test_detector_matches_ground_truth(held_out_scenes, perturb):
    _, scenes, images = held_out_scenes
    images = images if perturb is None else perturb(images)
    classifier = ShapesColorClassifier()
    agree, scores = 0, []
    for image, scene, detections in zip(images, scenes, detect_all(images)):
        found = set()
        for d in detections:
            row, col = int((d.box[1] + d.box[3]) / 2 // world.CELL), int((d.box[0] + d.box[2]) / 2 // world.CELL)
            found.add((d.label, classifier.classify(image, d, list(world.COLORS)), row, col))
        agree += found == {(o.shape, o.color, o.row, o.col) for o in scene}
        scores += [d.score for d in detections]
    assert agree / len(scenes) >= 0.99
    if perturb in (None, add_noise):
        assert min(scores) > 0.9  # counting's threshold
    if perturb is None:
        boxes = {d.box for ds in detect_all(images[:50]) for d in ds}
        assert boxes <= {world.object_box(world.ShapeObject("square", "red", r, c)) for r in range(3) for c in range(3)}


def test_ambiguous_blob_scores_low():
    half_circle_half_square = 0.5 * (world.SHAPE_MASKS["circle"] + world.SHAPE_MASKS["square"].astype(float))
    image = np.zeros((30, 30, 3), dtype=np.uint8)
    image[11:19, 11:19, 0] = np.round(255 * half_circle_half_square)
    detections = ShapesDetector().detect(image)
    assert len(detections) == 1 and detections[0].score < 0.3


def test_reward_on_renders_and_blank(held_out_scenes):
    metadata, _, images = held_out_scenes
    reward = build_reward("geneval_shapes")
    out = reward(images, [m["prompt"] for m in metadata], metadata)
    out = validate_reward_output("geneval_shapes", out, len(images))
    assert np.mean(out.details["strict"]) >= 0.99
    assert np.mean(out.details["correct"]) >= 0.99
    assert np.mean(out.scores) >= 0.99
    prompts = world.all_prompts()
    blank = reward(np.zeros((len(prompts), 30, 30, 3), dtype=np.uint8), [p["prompt"] for p in prompts], prompts)
    assert blank.details["strict"] == [0.0] * len(prompts) and blank.details["correct"] == [0.0] * len(prompts)
    assert max(blank.scores) == 0.0


def test_color_classifier_names_unknown_candidates():
    detection = ShapesDetector().detect(world.render([world.ShapeObject("circle", "red", 0, 0)]))[0]
    with pytest.raises(ValueError, match="orange"):
        ShapesColorClassifier().classify(np.zeros((30, 30, 3), dtype=np.uint8), detection, ["red", "orange"])
