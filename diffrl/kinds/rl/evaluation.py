"""The RL job's held-out eval (fixed seeds; the ODE or the rollout's sampler; eval-EMA weights when kept), its
metrics, the before/after sample grids and the metrics record of a training step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.sync import WeightSync
from diffrl.kinds.rollouts import eval_metrics, eval_requests, generate_and_score, write_grid
from diffrl.platform.runs import RunLog
from diffrl.platform.worker import WorkerGroup
from diffrl.workers.batch import RolloutBatch


def evaluate(cfg: RLJobConfig, sync: WeightSync, rollout: WorkerGroup, rewards: list[WorkerGroup],
             prompts: list[dict], step: int, log: RunLog) -> tuple[float, RolloutBatch]:
    """Held-out eval (the eval EMA weights when learner.eval_ema_decay > 0) with the deterministic ODE sampler on
    the even grid of trainer.eval_steps, or with the rollout's own sampler and grid (trainer.eval_sampler: rollout);
    logs eval/* and returns the headline and the batch."""
    use_ema = cfg.learner.eval_ema_decay > 0 and step > 0
    if use_ema:
        sync.sync(ema=True)
    sampling = ({} if cfg.trainer.eval_sampler == "rollout"
                else {"sampler": "ode", "num_steps": cfg.trainer.eval_steps or cfg.rollout.num_steps})
    batch = generate_and_score(rollout, rewards, eval_requests(prompts, cfg.trainer.eval_seeds_per_prompt),
                               **sampling)
    if use_ema:
        sync.sync()
    metrics = eval_metrics(batch, cfg.trainer.eval_metric)
    log.write({"step": step, **metrics})
    return metrics["eval/headline"], batch


def write_rl_grid(cfg: RLJobConfig, batch: RolloutBatch, run_dir: Path, which: str, step: int, score: float) -> None:
    title = f"{'before' if which == 'before' else 'after'} RL: {cfg.trainer.eval_label} {score:.3f}"
    write_grid(batch, run_dir, which, step, title, cfg.trainer.eval_seeds_per_prompt, cfg.trainer.sample_grid_prompts)


def step_record(step: int, batch: RolloutBatch, results: list[dict[str, float]], times: dict[str, float],
                version: int) -> dict[str, Any]:
    """One metrics.jsonl record of a training step: reward mean/std, every numeric reward detail (and per task tag
    when prompts carry one), the learner's metrics averaged over ranks, stage times and the weight version."""
    record = {"step": step, "reward/mean": float(batch.rewards.mean()), "reward/std": float(batch.rewards.std()),
              "weight_version": version, **times}
    if batch.nfe is not None:  # rollout model calls per sample (MixGRPO-Flash's tail makes fewer)
        record["rollout/nfe"] = float(batch.nfe.float().mean())
    record.update({f"train/{k}": float(np.mean([r[k] for r in results])) for k in results[0]})
    tags = [m.get("tag") for m in batch.metadata]
    for key, values in batch.reward_details.items():
        if not values or not isinstance(values[0], (int, float)):
            continue
        record[f"reward/{key}"] = float(np.mean(values))
        for tag in sorted({t for t in tags if t}):
            record[f"reward/{key}/{tag}"] = float(np.mean([v for v, t in zip(values, tags) if t == tag]))
    return record
