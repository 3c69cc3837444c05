"""Rollout-then-score: generate samples over a rollout group and score them with every reward group, shard by
shard. The RL step, the held-out eval and Sol-RL's explore / regenerate / audit stages all use it."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from diffrl.platform.worker import Pending, WorkerGroup, split_evenly
from diffrl.rewards.base import RewardOutput
from diffrl.workers.batch import RolloutBatch, SampleRequest


def generate_and_score(rollout: WorkerGroup, rewards: list[WorkerGroup], requests: list[SampleRequest],
                       times: dict[str, float] | None = None, stage: str = "rollout",
                       **generate_kwargs: Any) -> RolloutBatch:
    """Generate `requests` in one shard per worker of `rollout` and score them with every reward group; rows stay
    in request order.

    Scoring starts per shard as soon as that shard is generated (reward groups work while other rollout workers are
    still sampling). With `times`, adds the seconds until the last shard is generated to times["time/<stage>"] and
    the further wait for the rewards to times["time/reward"].
    """
    tick = time.perf_counter()
    batches: dict[int, RolloutBatch] = {}
    scoring: dict[int, list[Pending]] = {}
    for index, shard in rollout.map_async("generate", requests, **generate_kwargs).as_completed():
        batches[index] = shard
        scoring[index] = [score_async(group, shard) for group in rewards]
    if times is not None:
        times[f"time/{stage}"] = times.get(f"time/{stage}", 0.0) + time.perf_counter() - tick
        tick = time.perf_counter()
    for index in sorted(batches):
        outputs = [RewardOutput.concat(pending.results()) for pending in scoring[index]]
        batches[index].rewards = torch.tensor(np.sum([o.scores for o in outputs], axis=0), dtype=torch.float32)
        batches[index].reward_details = {k: v for o in outputs for k, v in o.details.items()}
    if times is not None:
        times["time/reward"] = times.get("time/reward", 0.0) + time.perf_counter() - tick
    return RolloutBatch.concat([batches[i] for i in sorted(batches)])


def score_async(rewards: WorkerGroup, batch: RolloutBatch) -> Pending:
    """Score `batch` split over the group's replicas; `results()` gives the RewardOutputs in row order (a call
    whose replica died is sent again)."""
    shards = [(batch.images[rows], [batch.prompts[r] for r in rows], [batch.metadata[r] for r in rows])
              for rows in split_evenly(list(range(len(batch))), len(rewards))]
    return rewards.scatter_async("score", shards, spread=True)
