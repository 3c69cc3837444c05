"""The reward worker validates every output and names the reward in every error; rewards combine by weight."""

import math
import time

import numpy as np
import pytest

from diffrl.envs.shapes import all_prompts, render_prompt
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


CALLS = {"flaky": 0, "counted": 0}


def flaky(failures=2):
    """Fails `failures` times, then works."""

    def reward(images, prompts, metadata):
        CALLS["flaky"] += 1
        if CALLS["flaky"] <= failures:
            raise ConnectionError(f"transient failure {CALLS['flaky']}")
        return RewardOutput(scores=[1.0] * len(images))

    return reward


def counted_bad():
    def reward(images, prompts, metadata):
        CALLS["counted"] += 1
        return RewardOutput(scores=[math.nan] * len(images))

    return reward


def hangs():
    def reward(images, prompts, metadata):
        time.sleep(30)
        return RewardOutput(scores=[1.0] * len(images))

    return reward


@pytest.mark.parametrize(
    "factory, message",
    [
        # A wrong length is a bug in the reward: it fails at once, without retries.
        ("wrong_length", r"reward '.*:wrong_length' returned 1 scores for a batch of 3 images"),
        ("not_finite", r"reward '.*:not_finite' failed after 2 attempt\(s\): RewardError: score 0 is nan"),
        ("raises", r"reward '.*:raises' failed after 2 attempt\(s\): ConnectionError: reward server unreachable"),
    ],
)
def test_bad_rewards_fail_loudly_with_their_name(factory, message):
    images, prompts, meta = batch()
    with pytest.raises(RewardError, match=message):
        worker({"name": f"{__name__}:{factory}", "retries": 1, "backoff_s": 0.0}).score(images, prompts, meta)


def test_retries_are_bounded_and_a_transient_failure_recovers():
    images, prompts, meta = batch()
    CALLS["flaky"] = 0
    out = worker({"name": f"{__name__}:flaky", "retries": 2, "backoff_s": 0.0}).score(images, prompts, meta)
    assert out.scores == [1.0, 1.0, 1.0] and CALLS["flaky"] == 3
    CALLS["counted"] = 0
    with pytest.raises(RewardError, match="failed after 4 attempt"):
        worker({"name": f"{__name__}:counted_bad", "retries": 3, "backoff_s": 0.0}).score(images, prompts, meta)
    assert CALLS["counted"] == 4  # never a silent zero: every attempt ran and the step failed


def test_a_hanging_reward_times_out_with_its_name():
    """In-process the hung call cannot be stopped, so it is not retried beside itself (on Ray the replica is restarted
    and the call re-sent: tests/test_run_faults.py)."""
    images, prompts, meta = batch()
    tick = time.perf_counter()
    with pytest.raises(RewardError, match=r"reward '.*:hangs' gave no answer within timeout_s=0.3 s"):
        worker({"name": f"{__name__}:hangs", "retries": 1, "timeout_s": 0.3, "backoff_s": 0.0}).score(
            images, prompts, meta)
    assert time.perf_counter() - tick < 15  # the hung call (30 s) was abandoned, not waited for


def test_unknown_reward_lists_registered_names():
    with pytest.raises(RewardError, match=r"unknown reward 'genevall'; registered rewards: \[.*'geneval_shapes'"):
        worker({"name": "genevall"})
    with pytest.raises(RewardError, match=r"'diffrl\.rewards\.base' has no attribute 'nope'"):
        worker({"name": "diffrl.rewards.base:nope"})
    with pytest.raises(RewardError, match=r"cannot import module 'no_such_module_xyz'"):
        worker({"name": "no_such_module_xyz:factory"})
    with pytest.raises(RewardError, match=r"file not found: missing.py"):
        worker({"name": "missing.py:reward"})
