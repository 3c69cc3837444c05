"""The RL job's held-out eval (deterministic ODE sampling from fixed seeds, eval-EMA weights when kept), its
metrics, the before/after sample grids and the metrics record of a training step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.data import eval_requests
from diffrl.kinds.rl.scoring import generate_and_score
from diffrl.kinds.rl.sync import WeightSync
from diffrl.platform.reporting import sample_grid
from diffrl.platform.runs import RunLog
from diffrl.platform.worker import WorkerGroup
from diffrl.utils.atomic import atomic_write_text
from diffrl.workers.batch import RolloutBatch


def evaluate(cfg: RLJobConfig, sync: WeightSync, rollout: WorkerGroup, rewards: list[WorkerGroup],
             prompts: list[dict], step: int, log: RunLog) -> tuple[float, RolloutBatch]:
    """Held-out eval with the deterministic ODE sampler (and the eval EMA weights when learner.eval_ema_decay > 0);
    logs eval/* and returns the headline and the batch."""
    use_ema = cfg.learner.eval_ema_decay > 0 and step > 0
    if use_ema:
        sync.sync(ema=True)
    batch = generate_and_score(rollout, rewards, eval_requests(prompts, cfg.trainer.eval_seeds_per_prompt),
                               sampler="ode")
    if use_ema:
        sync.sync()
    metrics = eval_metrics(batch, cfg.trainer.eval_metric)
    log.write({"step": step, **metrics})
    return metrics["eval/headline"], batch


def eval_metrics(batch: RolloutBatch, metric: str) -> dict[str, float]:
    """Mean of every numeric reward detail, per tag and averaged over tags (GenEval's overall score)."""
    tags = [m.get("tag", "all") for m in batch.metadata]
    out: dict[str, float] = {"eval/reward": float(batch.rewards.mean())}
    for key, values in batch.reward_details.items():
        if not values or not isinstance(values[0], (int, float)):
            continue
        per_tag = {tag: float(np.mean([v for v, g in zip(values, tags) if g == tag])) for tag in sorted(set(tags))}
        out.update({f"eval/{key}/{tag}": value for tag, value in per_tag.items()})
        out[f"eval/{key}"] = float(np.mean(list(per_tag.values())))
    if f"eval/{metric}" not in out:
        known = sorted(key for key, values in batch.reward_details.items()
                       if values and isinstance(values[0], (int, float)))
        raise KeyError(f"trainer.eval_metric: {metric!r} is not produced by the rewards; available: {known}")
    out["eval/headline"] = out[f"eval/{metric}"]
    return out


def write_grid(cfg: RLJobConfig, batch: RolloutBatch, run_dir: Path, which: str, step: int, score: float) -> None:
    """samples_<which>.png (one row per prompt) and its entry in samples.json (title, prompts, step) for the
    report."""
    per_prompt = cfg.trainer.eval_seeds_per_prompt
    rows = min(cfg.trainer.sample_grid_prompts, len(batch) // per_prompt)
    keep = [p * per_prompt + j for p in range(rows) for j in range(min(per_prompt, 8))]
    title = f"{'before' if which == 'before' else 'after'} RL: {cfg.trainer.eval_label} {score:.3f}"
    sample_grid(batch.images[keep], [batch.prompts[i] for i in keep], min(per_prompt, 8),
                run_dir / f"samples_{which}.png", title=title)
    index_path = run_dir / "samples.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[which] = {"title": title, "step": step, "prompts": [batch.prompts[p * per_prompt] for p in range(rows)]}
    atomic_write_text(index_path, json.dumps(index, indent=1))


def step_record(step: int, batch: RolloutBatch, results: list[dict[str, float]], times: dict[str, float],
                version: int) -> dict[str, Any]:
    """One metrics.jsonl record of a training step: reward mean/std, every numeric reward detail (and per task tag
    when prompts carry one), the learner's metrics averaged over ranks, stage times and the weight version."""
    record = {"step": step, "reward/mean": float(batch.rewards.mean()), "reward/std": float(batch.rewards.std()),
              "weight_version": version, **times}
    record.update({f"train/{k}": float(np.mean([r[k] for r in results])) for k in results[0]})
    tags = [m.get("tag") for m in batch.metadata]
    for key, values in batch.reward_details.items():
        if not values or not isinstance(values[0], (int, float)):
            continue
        record[f"reward/{key}"] = float(np.mean(values))
        for tag in sorted({t for t in tags if t}):
            record[f"reward/{key}/{tag}"] = float(np.mean([v for v, t in zip(values, tags) if t == tag]))
    return record
