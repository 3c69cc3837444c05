"""Faults in a run: an overdue reward call restarts its replica (never runs beside its retry) and the error names the
reward and the timeout; failures after start name the role, rank and cause; non-finite training state stops the
run naming the step and the first bad tensor."""

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrl.platform.ray_backend import RayBackend, ResourcePool
from diffrl.platform.calls import describe_failure
from diffrl.platform.worker import Placement, WorkerGroup, WorkerLost
from diffrl.rewards.base import RewardOutput
from diffrl.workers.reward import RewardWorker

FIXTURES = Path(__file__).parent / "reward_fixtures.py"
IMAGES = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
EXPECTED = [float(int(image.sum()) % 997) for image in IMAGES]


def reward_group(pool, spec: dict, timeout_s: float, max_restarts: int) -> WorkerGroup:
    group = WorkerGroup(RayBackend(pool), RewardWorker, [([spec],)], Placement(0.5, max_restarts=max_restarts,
                        call_timeout_s=timeout_s), "reward 'hang_once'")
    group.run("setup")
    group.note_health(group.run("health"))
    return group


def score(group: WorkerGroup, shards: int = 2) -> list:
    rows = np.array_split(np.arange(len(IMAGES)), shards)
    return group.scatter_async("score", [(IMAGES[r], [""] * len(r), [{}] * len(r)) for r in rows],
                               spread=True).results()


def test_an_overdue_reward_call_restarts_its_replica_and_is_resent(ray_cluster, tmp_path):
    pool = ResourcePool("reward-timeout", num_bundles=1, cpus=0.5)
    spec = {"name": f"{FIXTURES}:hang_once", "kwargs": {"marker": str(tmp_path / "hung")}, "retries": 0}
    group = reward_group(pool, spec, timeout_s=3.0, max_restarts=1)
    try:
        before = group.incarnations[0]
        tick = time.monotonic()
        out = RewardOutput.concat(score(group))  # the first call hangs for 10 minutes
        assert out.scores == EXPECTED and time.monotonic() - tick < 60
        assert group.restarts == [1] and group.run("health")[0]["incarnation"] != before  # the hung process is gone
    finally:
        group.shutdown()
        pool.remove()


def test_with_no_restarts_left_the_error_names_the_reward_and_the_timeout(ray_cluster, tmp_path):
    pool = ResourcePool("reward-timeout0", num_bundles=1, cpus=0.5)
    spec = {"name": f"{FIXTURES}:hang_once", "kwargs": {"marker": str(tmp_path / "hung")}, "retries": 0}
    group = reward_group(pool, spec, timeout_s=2.0, max_restarts=0)
    try:
        with pytest.raises(WorkerLost, match=r"reward 'hang_once' worker 0 .*score gave no answer within 2 s"):
            score(group, shards=1)
    finally:
        group.shutdown()
        pool.remove()


def test_a_failure_after_start_names_the_role_rank_and_cause(ray_cluster, tmp_path):
    file = tmp_path / "boom.py"
    file.write_text("def boom(images, prompts, metadata):\n    raise ValueError('the detector is not loaded')\n")
    pool = ResourcePool("reward-boom", num_bundles=1, cpus=0.5)
    group = WorkerGroup(RayBackend(pool), RewardWorker, [([{"name": f"{file}:boom", "retries": 0}],)],
                        Placement(0.5), "reward 'boom'")
    try:
        group.run("setup")
        group.note_health(group.run("health"))
        with pytest.raises(Exception) as caught:
            score(group, shards=1)
        line = describe_failure(caught.value)
        assert line.startswith("reward 'boom' worker 0 (score) failed: RewardError: reward ")
        assert line.endswith("failed after 1 attempt(s): ValueError: the detector is not loaded")
        assert "\n" not in line and "Traceback" not in line
    finally:
        group.shutdown()
        pool.remove()


# ------------------------------------------------------------------------------------------------ non-finite state
def _learner(tmp_path):
    from diffrl.algorithms.advantages import group_advantages
    from diffrl.kinds.rl.config import RLJobConfig
    from diffrl.platform.runtime import file_rendezvous
    from diffrl.workers.batch import SampleRequest
    from diffrl.workers.learner import LearnerWorker
    from diffrl.workers.rollout import RolloutWorker

    cfg = RLJobConfig(model={"path": None}, rollout={"num_steps": 4, "prompts_per_step": 1, "group_size": 4},
                      learner={"micro_batch_size": 4, "awm": {"num_timesteps": 2}})
    rollout = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump())
    rollout.setup()
    batch = rollout.generate([SampleRequest("a photo of a red circle", {}, 0, 7 + i) for i in range(4)])
    batch.rewards = torch.tensor([0.1, 0.9, 0.5, 0.2])
    batch.advantages = group_advantages(batch.rewards, batch.group_ids, clip=5.0, scale=5.0)
    learner = LearnerWorker(0, 1, cfg.model.model_dump(), cfg.learner.model_dump(), 4)
    learner.setup(rendezvous=file_rendezvous(tmp_path))
    return learner, batch


def test_a_non_finite_loss_or_gradient_stops_the_update_naming_the_step_and_tensor(tmp_path):
    from diffrl.workers.finite import NonFiniteError

    learner, batch = _learner(tmp_path)
    name, param = next((n, p) for n, p in learner.engine.module.named_parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in learner.engine.module.named_parameters()}
    handle = param.register_hook(lambda grad: grad * math.nan)
    with pytest.raises(NonFiniteError, match=rf"step 3: the gradient norm is nan .*first at '{name}'.*before the update"):
        learner.update(batch, step=3)
    handle.remove()
    after = dict(learner.engine.module.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing was applied
    learner.engine.zero_grad()
    with torch.no_grad():
        param.view(-1)[0] = math.inf
    with pytest.raises(NonFiniteError, match=r"step 4: the loss is (nan|inf) on learner rank 0"):
        learner.update(batch, step=4)


def test_the_first_non_finite_tensor_is_named():
    from diffrl.workers.finite import first_non_finite

    tensors = [("a", torch.zeros(2)), ("b", torch.tensor([1.0, math.inf])), ("c", torch.tensor([math.nan]))]
    assert first_non_finite(tensors) == "b" and first_non_finite(tensors[:1]) is None


def test_a_call_queued_behind_another_pendings_call_is_timed_from_when_it_starts(ray_cluster):
    """Two Pendings share one replica (as a step's per-shard score calls do): each call takes 2 s against a 3 s
    timeout, so the second one ends 4 s after it was sent. Its clock starts when the first finished: no restart."""
    pool = ResourcePool("reward-queued", num_bundles=1, cpus=0.5)
    spec = {"name": f"{FIXTURES}:slow_checksum", "kwargs": {"delay": 2.0}, "retries": 0}
    group = reward_group(pool, spec, timeout_s=3.0, max_restarts=1)
    try:
        first = group.scatter_async("score", [(IMAGES[:2], [""] * 2, [{}] * 2)], spread=True)
        second = group.scatter_async("score", [(IMAGES[2:], [""] * 2, [{}] * 2)], spread=True)
        later = second.results()[0]  # collected first, while it waits behind `first` on the replica
        earlier = first.results()[0]
        assert earlier.scores + later.scores == EXPECTED and group.restarts == [0]
    finally:
        group.shutdown()
        pool.remove()
