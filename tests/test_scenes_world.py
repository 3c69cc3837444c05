"""The scenes world (issue 28): its catalog, renders, detector and GenEval's rules with the size extension, checked
against answers worked out by hand."""

from collections import Counter

import numpy as np
import pytest

from diffrl.envs import scenes
from diffrl.envs.scenes import SceneObject, all_prompts, prompt_splits, render, sample_scene
from diffrl.rewards.base import build_reward
from diffrl.rewards.geneval import Detection, geneval_prompt_problem, size_of
from diffrl.rewards.scenes_detector import ScenesDetector


def score(objects: list[SceneObject], include: list[dict], tag: str = "color_attr") -> tuple[float, float]:
    reward = build_reward("geneval_scenes")
    out = reward(render(objects)[None], ["p"], [{"tag": tag, "include": include}])
    return round(out.details["partial"][0], 4), out.details["strict"][0]


def test_the_catalog_has_every_combination_once():
    prompts = all_prompts()
    # 5 shapes; 5 x 5 colors x 2 sizes; 5 x 4 ordered pairs; C(5,3) + C(5,4) + C(5,5); 5 x 5 counts;
    # 20 pairs x 4 relations x 20 ordered color pairs; C(5,3) x 5 x 4 x 3; 20 pairs x 4 size pairs.
    assert Counter(p["tag"] for p in prompts) == {"single_object": 5, "colors": 50, "two_object": 20,
                                                   "multi_object": 16, "counting": 25, "position": 1600,
                                                   "color_attr": 600, "size_attr": 80}
    assert len({p["prompt"] for p in prompts}) == len(prompts)
    assert {"a photo of six crosses", "a photo of a small white diamond", "a photo of a red circle left of a blue "
            "square", "a photo of a red circle, a green square and a blue triangle"} <= {p["prompt"] for p in prompts}
    assert all(geneval_prompt_problem(p) is None for p in prompts)


def test_held_out_prompts_are_never_trained_on_and_the_split_is_fixed():
    train, heldout = prompt_splits(heldout_per_tag=4, seed=0)
    assert Counter(p["tag"] for p in heldout) == {tag: 4 for tag in scenes.TAGS}
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    assert len(train) + len(heldout) == len(all_prompts())
    assert prompt_splits(4, 0) == (train, heldout) and prompt_splits(4, 1)[1] != heldout


def test_render_draws_small_and_large_objects_pixel_for_pixel():
    image = render([SceneObject("cross", "red", "small", 0, 0), SceneObject("square", "white", "large", 3, 3)])
    assert image.shape == (40, 40, 3)
    red = np.argwhere((image == (255, 0, 0)).all(-1))
    # A small cross: 5 px box at offset 2 of cell (0, 0), 1-px bars through its centre pixel (4, 4).
    assert sorted(map(tuple, red)) == sorted({(y, 4) for y in range(2, 7)} | {(4, x) for x in range(2, 7)})
    white = (image == 255).all(-1)
    assert white.sum() == 64 and white[31:39, 31:39].all()
    with pytest.raises(ValueError, match="already taken"):
        render([SceneObject("circle", "red", "small", 1, 1), SceneObject("square", "blue", "large", 1, 1)])


def test_the_detector_names_every_shape_and_size_in_every_cell():
    for shape in scenes.SHAPES:
        for size in scenes.SIZES:
            objects = [SceneObject(shape, "yellow", size, *divmod(cell, 4)) for cell in range(16)]
            detections = ScenesDetector().detect(render(objects))
            assert [(d.label, d.attributes["size"]) for d in detections] == [(shape, size)] * 16
            assert min(d.score for d in detections) > 0.9  # above GenEval's counting threshold


def test_every_prompt_has_a_scene_its_rules_accept_with_distractors_it_does_not_name():
    rng = np.random.default_rng(0)
    prompts = all_prompts()[::7]
    images, sizes = [], []
    for meta in prompts:
        objects = sample_scene(meta, rng)
        named = {c["class"] for c in meta["include"]}
        required = sum(c["count"] for c in meta["include"])
        if required >= 5 or len(named) == 5:  # no room, or no unnamed shape left for a distractor
            assert len(objects) == required
        else:
            assert max(3, required) <= len(objects) <= 5
        assert sum(o.shape in named for o in objects) == required
        images.append(render(objects))
        sizes.append(len(objects))
    out = build_reward("geneval_scenes")(np.stack(images), [p["prompt"] for p in prompts], prompts)
    assert out.details["strict"] == [1.0] * len(prompts)
    assert max(sizes) == 6 and min(sizes) == 3 and Counter(sizes)[5] > 0


def test_size_binding_by_hand():
    include = [{"class": "circle", "count": 1, "size": "small"}, {"class": "square", "count": 1, "size": "large"}]
    right = [SceneObject("circle", "red", "small", 0, 0), SceneObject("square", "red", "large", 2, 2)]
    swapped = [SceneObject("circle", "red", "large", 0, 0), SceneObject("square", "red", "large", 2, 2)]
    assert score(right, include, "size_attr") == (1.0, 1.0)
    # circle: count 1, size 0 (no small circle); square: count 1, size 1 -> (1 + 0 + 1 + 1) / 4
    assert score(swapped, include, "size_attr") == (0.75, 0.0)


def test_color_binding_across_three_objects_by_hand():
    include = [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "green"},
               {"class": "triangle", "count": 1, "color": "blue"}]
    bound = [SceneObject("circle", "red", "large", 0, 0), SceneObject("square", "green", "small", 1, 1),
             SceneObject("triangle", "blue", "large", 2, 2)]
    crossed = [SceneObject("circle", "green", "large", 0, 0), SceneObject("square", "red", "small", 1, 1),
               SceneObject("triangle", "blue", "large", 2, 2)]
    assert score(bound, include) == (1.0, 1.0)
    # circle and square: count 1, color 0; triangle: count 1, color 1 -> 4 / 6
    assert score(crossed, include) == (0.6667, 0.0)


def test_a_relation_between_specific_objects_beside_a_distractor_by_hand():
    include = [{"class": "square", "count": 1, "color": "blue"},
               {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]}]
    distractor = SceneObject("triangle", "green", "small", 0, 3)
    left = [SceneObject("circle", "red", "large", 1, 0), SceneObject("square", "blue", "large", 1, 2), distractor]
    right = [SceneObject("circle", "red", "large", 1, 2), SceneObject("square", "blue", "large", 1, 0), distractor]
    assert score(left, include, "position") == (1.0, 1.0)
    # square: count 1, color 1; circle: count 1, color 1, then Flow-GRPO's 0 and 1 for the failed pair -> 5 / 6
    assert score(right, include, "position") == (0.8333, 0.0)


def test_counting_up_to_six_by_hand():
    include = [{"class": "diamond", "count": 6}]
    six = [SceneObject("diamond", "white", "small", *divmod(cell, 4)) for cell in range(6)]
    assert score(six, include, "counting") == (1.0, 1.0)
    assert score(six[:4], include, "counting") == (round(1 - 2 / 6, 4), 0.0)


def test_a_size_clause_needs_a_detector_that_reports_sizes():
    with pytest.raises(ValueError, match="reports none"):
        size_of(Detection("circle", (0, 0, 8, 8), 1.0))
    assert "size must be a string" in geneval_prompt_problem(
        {"tag": "colors", "include": [{"class": "circle", "count": 1, "size": 5}]})
    with pytest.raises(ValueError, match="size 'huge'"):
        sample_scene({"tag": "colors", "include": [{"class": "circle", "count": 1, "size": "huge"}]},
                     np.random.default_rng(0))
