"""The learned preference reward's parts with hand-worked answers: one-attribute changes of scenes prompts, the
contrastive loss with hard negatives, the data rows, the reward's errors and the shipped checkpoint's known answers
(like PickScore's: the true image above the changed one, the true caption above a changed one)."""

import math

import numpy as np
import pytest
import torch

from diffrl.algorithms.preference import contrastive_preference_loss
from diffrl.envs import scenes
from diffrl.envs.scenes_pairs import applicable, perturb


def entry(prompt: str) -> dict:
    return next(p for p in scenes.all_prompts() if p["prompt"] == prompt)


def test_which_changes_apply_to_which_prompts():
    assert applicable(entry("a photo of a circle")) == ["shape"]
    assert applicable(entry("a photo of a small red circle")) == ["color", "size", "shape"]
    assert applicable(entry("a photo of two circles")) == ["count", "shape"]
    assert applicable(entry("a photo of a red circle left of a green square")) == ["color", "relation", "shape",
                                                                                  "binding"]
    assert applicable(entry("a photo of a circle, a square, a triangle, a diamond and a cross")) == []
    with pytest.raises(ValueError, match="perturbation 'count' does not apply to 'a photo of a circle'"):
        perturb(entry("a photo of a circle"), "count", np.random.default_rng(0))


def test_a_count_change_moves_the_count_and_its_exclusion():
    changed = perturb(entry("a photo of two circles"), "count", np.random.default_rng(0))
    assert changed["prompt"] == "a photo of three circles"  # 1 is not a counting prompt: two can only become three
    assert changed["include"] == [{"class": "circle", "count": 3}]
    assert changed["exclude"] == [{"class": "circle", "count": 4}]
    six = perturb(entry("a photo of six crosses"), "count", np.random.default_rng(0))
    assert six["prompt"] == "a photo of five crosses" and six["exclude"] == [{"class": "cross", "count": 6}]


def test_relation_and_binding_changes_keep_everything_else():
    original = entry("a photo of a red circle left of a green square")
    for seed in range(8):
        moved = perturb(original, "relation", np.random.default_rng(seed))
        relation = moved["include"][1]["position"][0]
        assert relation in ("right of", "above", "below")
        assert moved["prompt"] == f"a photo of a red circle {relation} a green square"
        swapped = perturb(original, "binding", np.random.default_rng(seed))
        assert swapped["prompt"] == "a photo of a green circle left of a red square"
    three = entry("a photo of a red circle, a green square and a blue triangle")
    swapped = perturb(three, "binding", np.random.default_rng(1))
    colors = [c["color"] for c in swapped["include"]]
    assert sorted(colors) == ["blue", "green", "red"] and sum(a != b for a, b in zip(colors, ["red", "green", "blue"])) == 2
    assert [c["class"] for c in swapped["include"]] == ["circle", "square", "triangle"]


def test_color_and_shape_changes_pick_values_the_prompt_does_not_name():
    original = entry("a photo of a red circle, a green square and a blue triangle")
    for seed in range(10):
        recolored = perturb(original, "color", np.random.default_rng(seed))
        colors = [c["color"] for c in recolored["include"]]
        assert len(set(colors)) == 3 and sum(a != b for a, b in zip(colors, ["red", "green", "blue"])) == 1
        assert set(colors) - {"red", "green", "blue"} <= {"yellow", "white"}
        reshaped = perturb(original, "shape", np.random.default_rng(seed))
        shapes = [c["class"] for c in reshaped["include"]]
        assert sum(a != b for a, b in zip(shapes, ["circle", "square", "triangle"])) == 1
        assert set(shapes) - {"circle", "square", "triangle"} <= {"diamond", "cross"}


def test_the_loss_by_hand():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    image = text = torch.cat([e1, e2])
    neg = -image  # cosine -1 with the row's own caption, 0 with the other row's
    scale = torch.tensor(1.0)
    loss, stats = contrastive_preference_loss(image, text, neg, neg, scale, torch.eye(2, dtype=torch.bool))
    # each row's logits [1, 0, -1, 0] in both directions
    assert float(loss) == pytest.approx(math.log(math.e + 2 + 1 / math.e) - 1, abs=1e-6)
    assert float(stats["pair_accuracy"]) == 1.0 and float(stats["cosine"]) == pytest.approx(1.0)
    # two rows with one caption and one image: the other row is not a negative (masked), its hard negative is
    same = torch.ones(2, 2, dtype=torch.bool)
    image = text = torch.cat([e1, e1])
    loss, _ = contrastive_preference_loss(image, text, -image, -image, scale, same)
    assert float(loss) == pytest.approx(math.log(math.e + 2 / math.e) - 1, abs=1e-6)  # logits [1, -inf, -1, -1]


def test_blank_images_are_negatives_of_every_caption_only():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    image = text = torch.cat([e1, e2])
    neg, scale, same = -image, torch.tensor(1.0), torch.eye(2, dtype=torch.bool)
    blank = torch.tensor([[0.6, 0.8]])  # cosine 0.6 with caption 1, 0.8 with caption 2
    loss, stats = contrastive_preference_loss(image, text, neg, neg, scale, same, blank)
    # caption -> image logits gain the blank column: [1, 0, -1, 0, 0.6] and [0, 1, 0, -1, 0.8]; image -> caption
    # logits stay [1, 0, -1, 0] (a blank has no caption to pick)
    base = math.log(math.e + 2 + 1 / math.e)
    expected = 0.5 * (0.5 * (math.log(math.exp(1) + 2 + math.exp(-1) + math.exp(0.6)) - 1)
                      + 0.5 * (math.log(math.exp(1) + 2 + math.exp(-1) + math.exp(0.8)) - 1) + base - 1)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(stats["blank_accuracy"]) == 1.0
    _, stats = contrastive_preference_loss(image, text, neg, neg, scale, same, torch.tensor([[0.0, 1.0]]))
    assert float(stats["blank_accuracy"]) == 0.5  # caption 2 scores the blank (cosine 1) as high as its own image


def test_the_pair_term_by_hand():
    """PickScore's two-image term: -log sigmoid(scale * (s+ - s-)) per row, added with its weight."""
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    image = text = torch.cat([e1, e2])
    neg = torch.cat([torch.tensor([[0.6, 0.8]]), e2])  # row 1: s- = 0.6; row 2: s- = 1 = s+
    scale, same = torch.tensor(2.0), torch.eye(2, dtype=torch.bool)
    base, _ = contrastive_preference_loss(image, text, neg, neg, scale, same)
    loss, _ = contrastive_preference_loss(image, text, neg, neg, scale, same, pair_weight=0.5)
    pair = 0.5 * (math.log1p(math.exp(-2 * 0.4)) + math.log(2.0))
    assert float(loss - base) == pytest.approx(0.5 * pair, abs=1e-6)


def test_rows_balance_the_change_kinds_and_fresh_rows_do_not_repeat():
    from diffrl.envs.scenes_pairs import KINDS
    from diffrl.kinds.pretrain.preference_data import ScenesPairs

    split = {"heldout_per_tag": 4, "seed": 0}
    by_kind = ScenesPairs(0, 4, split, 0.5, 1.0, 0.1, balance="kind").batch(0, 120)
    by_tag = ScenesPairs(0, 4, split, 0.5, 1.0, 0.1, balance="tag").batch(0, 120)
    # drawn by task type, most rows change a shape or color; a relation change needs a position prompt (1 tag in 8)
    # and then is 1 of its ~4 kinds: about 1 row in 32
    assert min(by_kind.kinds.count(k) for k in KINDS) >= 10
    assert by_tag.kinds.count("relation") <= 6 and by_tag.kinds.count("shape") > 40
    fresh = ScenesPairs(0, 0, split, 0.0, 1.0, 0.0)
    a, b = fresh.batch(0, 8), fresh.batch(1, 8)
    assert not fresh._cache and torch.equal(a.image, fresh.batch(0, 8).image)
    assert not any(torch.equal(x, y) for x in a.image for y in b.image)
    with pytest.raises(ValueError, match="data.balance"):
        ScenesPairs(0, 4, split, 0.5, 1.0, 0.1, balance="prompt")


def test_data_rows_are_verified_pairs_and_deterministic():
    from diffrl.kinds.pretrain.preference_data import ScenesPairs, rule_strict

    source = ScenesPairs(0, 4, {"heldout_per_tag": 4, "seed": 0}, 0.5, 1.0, 0.1)
    a, b = source.batch(3, 6), source.batch(3, 6)
    assert torch.equal(a.image, b.image) and torch.equal(a.neg_ids, b.neg_ids) and a.kinds == b.kinds
    assert a.image.shape == (6, 3, 40, 40) and a.image.min() >= -1 and a.image.max() <= 1
    held = {p["prompt"] for p in source.heldout}
    assert not held & set(a.prompts)
    rules = rule_strict()
    for prompt, index in [(p, i) for p in range(0, len(source.train), 400) for i in range(2)]:
        pos, changed, neg, kind = source.pair(prompt, index)
        meta = source.train[prompt]
        assert rules(np.stack([pos, neg]), [meta["prompt"]] * 2, [meta, meta]).scores == [1.0, 0.0]
        assert changed["prompt"] != meta["prompt"] and kind in applicable(meta)


def test_the_reward_names_what_it_refuses():
    from diffrl.rewards.base import build_reward, prompt_problems

    problems = prompt_problems("scenes_preference", [{"prompt": "a photo of a purple circle"}])
    assert problems and "purple" in problems[0]
    assert not prompt_problems("scenes_preference", [entry("a photo of two circles")])
    reward = build_reward("scenes_preference")
    with pytest.raises(ValueError, match="scenes_preference reads 40x40 images"):
        reward(np.zeros((1, 30, 30, 3), np.uint8), ["a photo of a circle"], [{}])
    with pytest.raises(Exception, match="preference model weights not found: .*nowhere"):
        build_reward("scenes_preference", path="/nowhere")


def test_shipped_checkpoint_known_answers():
    """The true render of a held-out prompt above the render of its one-attribute change, and the true caption above
    a changed caption, on most verified held-out pairs."""
    from diffrl.kinds.pretrain.preference_data import heldout_pairs
    from diffrl.models.preference import PreferenceModel

    model = PreferenceModel.from_pretrained("builtin:scenes_pref")
    _, heldout = scenes.prompt_splits(4, 0)
    pairs = heldout_pairs(heldout, 2, seed=5)  # other draws than the training record's eval (seed 0)
    captions = [p["entry"]["prompt"] for p in pairs]
    pos, neg = np.stack([p["pos"] for p in pairs]), np.stack([p["neg"] for p in pairs])
    image_wins = np.mean(model.score(pos, captions) > model.score(neg, captions))
    caption_wins = np.mean(model.score(pos, captions) > model.score(pos, [p["changed"] for p in pairs]))
    assert image_wins >= 0.6 and caption_wins >= 0.6, (image_wins, caption_wins)


@pytest.mark.xfail(strict=True, reason="the shipped checkpoint still scores a blank image above the true render for 1 in 8 "
                   "held-out captions (docs/benchmarks.md, 'The scenes world'); it passes once that is under 1 in 10")
def test_shipped_checkpoint_prefers_a_render_to_a_blank_image():
    from diffrl.models.preference import PreferenceModel

    model = PreferenceModel.from_pretrained("builtin:scenes_pref")
    _, heldout = scenes.prompt_splits(4, 0)
    rng = np.random.default_rng(3)
    renders = np.stack([scenes.render_prompt(p, rng) for p in heldout])
    captions = [p["prompt"] for p in heldout]
    assert np.mean(model.score(renders, captions) > model.score(np.zeros_like(renders), captions)) >= 0.9
