"""Rollout-then-score, shared by the job kinds: generate samples over a rollout group and score them with every
reward group, shard by shard (the RL step, Sol-RL's explore / regenerate / audit stages and every held-out eval),
the held-out requests and metrics, and the sample grids of the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffrl.platform.reporting import sample_grid
from diffrl.platform.worker import Pending, WorkerGroup, split_evenly
from diffrl.rewards.base import RewardOutput
from diffrl.utils.atomic import atomic_write_text
from diffrl.utils.rng import EVAL_SEED_BASE
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


def eval_requests(prompts: list[dict], seeds_per_prompt: int) -> list[SampleRequest]:
    """Every held-out prompt times `seeds_per_prompt` fixed seeds (the same at every eval)."""
    return [
        SampleRequest(entry["prompt"], entry, group, EVAL_SEED_BASE + j)
        for group, entry in enumerate(prompts)
        for j in range(seeds_per_prompt)
    ]


def eval_metrics(batch: RolloutBatch, metric: str) -> dict[str, float]:
    """Mean of every numeric reward detail, per tag and averaged over tags (GenEval's overall score), and of the job
    reward (`eval/reward`: over all samples, and per tag); the headline is `metric`'s."""
    tags = [m.get("tag", "all") for m in batch.metadata]

    def per_tag(values: list) -> dict[str, float]:
        return {tag: float(np.mean([v for v, g in zip(values, tags) if g == tag])) for tag in sorted(set(tags))}

    out: dict[str, float] = {f"eval/reward/{tag}": v for tag, v in per_tag(batch.rewards.tolist()).items()}
    out["eval/reward"] = float(batch.rewards.mean())
    for key, values in batch.reward_details.items():
        if not values or not isinstance(values[0], (int, float)):
            continue
        means = per_tag(values)
        out.update({f"eval/{key}/{tag}": value for tag, value in means.items()})
        out[f"eval/{key}"] = float(np.mean(list(means.values())))
    if f"eval/{metric}" not in out:
        known = sorted(key for key, values in batch.reward_details.items()
                       if values and isinstance(values[0], (int, float)))
        raise KeyError(f"trainer.eval_metric: {metric!r} is not produced by the rewards; available: {known}")
    out["eval/headline"] = out[f"eval/{metric}"]
    return out


def write_grid(batch: RolloutBatch, run_dir: Path, which: str, step: int, title: str, per_prompt: int,
               max_prompts: int) -> None:
    """samples_<which>.png (one row per prompt, up to 8 of its seeds) and its entry in samples.json (title, prompts,
    step) for the report."""
    rows = min(max_prompts, len(batch) // per_prompt)
    keep = [p * per_prompt + j for p in range(rows) for j in range(min(per_prompt, 8))]
    sample_grid(batch.images[keep], [batch.prompts[i] for i in keep], min(per_prompt, 8),
                run_dir / f"samples_{which}.png", title=title)
    index_path = run_dir / "samples.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[which] = {"title": title, "step": step, "prompts": [batch.prompts[p * per_prompt] for p in range(rows)]}
    atomic_write_text(index_path, json.dumps(index, indent=1))
