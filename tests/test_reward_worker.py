"""The reward worker validates every output and names the reward in every error; rewards combine by weight."""

import math

import numpy as np
import pytest

from diffrl.models.shapes_world import all_prompts, render_prompt
from diffrl.rewards.base import RewardError, RewardOutput
from diffrl.workers.reward import RewardWorker


def constant(value=0.25):
    return lambda images, prompts, metadata: RewardOutput(scores=[value] * len(images))


def wrong_length():
    return lambda images, prompts, metadata: RewardOutput(scores=[1.0])


def not_finite():
    return lambda images, prompts, metadata: RewardOutput(scores=[math.nan] * len(images))


def raises():
    def reward(images, prompts, metadata):
        raise ConnectionError("reward server unreachable")

    return reward


def batch(n=3):
    entries = all_prompts()[:n]
    rng = np.random.default_rng(0)
    return np.stack([render_prompt(e, rng) for e in entries]), [e["prompt"] for e in entries], entries


def worker(*specs):
    w = RewardWorker(list(specs))
    w.setup()
    return w


def test_weighted_sum_and_details():
    images, prompts, meta = batch()
    out = worker({"name": "geneval_shapes", "weight": 1.0},
                 {"name": f"{__name__}:constant", "weight": 2.0, "kwargs": {"value": 0.5}}).score(images, prompts, meta)
    assert out.scores == pytest.approx([2.0, 2.0, 2.0])  # renders satisfy their prompts: geneval 1.0, plus 2 * 0.5
    assert out.details["geneval_shapes/strict"] == [1.0, 1.0, 1.0]
    assert out.details[f"{__name__}:constant"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "factory, message",
    [
        ("wrong_length", r"reward '.*:wrong_length' returned 1 scores for a batch of 3 images"),
        ("not_finite", r"reward '.*:not_finite' score 0 is nan, expected a finite float"),
        ("raises", r"reward '.*:raises' raised ConnectionError: reward server unreachable"),
    ],
)
def test_bad_rewards_fail_loudly_with_their_name(factory, message):
    images, prompts, meta = batch()
    with pytest.raises(RewardError, match=message):
        worker({"name": f"{__name__}:{factory}"}).score(images, prompts, meta)


def test_unknown_reward_lists_registered_names():
    with pytest.raises(RewardError, match=r"unknown reward 'genevall'; registered rewards: \['geneval_shapes'"):
        worker({"name": "genevall"})
    with pytest.raises(RewardError, match=r"cannot import 'nope' from 'tests'"):
        worker({"name": "tests:nope"})
