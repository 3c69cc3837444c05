"""Reward groups on a real Ray cluster: one group per reward, replicas score shards, a killed replica is restarted
and its batch re-sent, so every score arrives exactly once."""

import time
from pathlib import Path

import numpy as np
import ray

from diffrl.platform.ray_backend import RayBackend, ResourcePool
from diffrl.kinds.rollouts import score_async
from diffrl.platform.worker import Placement, WorkerGroup
from diffrl.rewards.base import RewardOutput
from diffrl.workers.batch import RolloutBatch
from diffrl.workers.reward import RewardWorker

FIXTURE = f"{Path(__file__).parent / 'reward_fixtures.py'}:slow_checksum"


def fake_batch(n: int) -> RolloutBatch:
    import torch

    images = np.random.default_rng(0).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return RolloutBatch(prompts=[f"p{i}" for i in range(n)], metadata=[{}] * n,
                        group_ids=torch.zeros(n, dtype=torch.long), seeds=torch.arange(n),
                        samples=torch.zeros(n, 3, 8, 8), images=images, grid=torch.linspace(1, 0, 3),
                        weight_version=torch.zeros(n, dtype=torch.long))


def test_killed_reward_replica_is_restarted_and_every_score_arrives_once(ray_cluster):
    batch = fake_batch(12)
    expected = [float(int(image.sum()) % 997) for image in batch.images]
    pool = ResourcePool("reward-kill", num_bundles=2, cpus=0.5)
    spec = {"name": FIXTURE, "kwargs": {"delay": 2.0}, "retries": 0}
    group = WorkerGroup(RayBackend(pool), RewardWorker, [([spec],)] * 2, Placement(0.5, max_restarts=2), "reward")
    try:
        group.run("setup")
        before = [h["incarnation"] for h in group.run("health")]
        group.note_health(group.run("health"))
        pending = score_async(group, batch)
        time.sleep(0.7)
        ray.kill(group.handles[0], no_restart=False)  # dies mid-batch; Ray restarts it, the group re-sends its call
        out = RewardOutput.concat(pending.results())
        assert out.scores == expected
        assert out.details[FIXTURE + "/prompt"] == batch.prompts  # each row answered exactly once, in order
        assert group.restarts == [1, 0]
        healths = group.run("health")
        assert [h["ready"] for h in healths] == [True, True]
        assert healths[0]["incarnation"] != before[0] and healths[1]["incarnation"] == before[1]  # only 0 restarted
    finally:
        group.shutdown()
        pool.remove()
