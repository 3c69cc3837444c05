"""Sol-RL's rollout strategy (arXiv 2604.06916): explore a pool of seeds per prompt with the low-precision copy,
choose group_size of them from the exploration rewards, regenerate exactly those seeds in full precision."""

from __future__ import annotations

import numpy as np
import torch

from diffrl.algorithms.sol import kendall_tau, select_seeds, spearman_rho, top_k_agreement
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.data import step_requests
from diffrl.kinds.rollouts import generate_and_score
from diffrl.platform.worker import WorkerGroup
from diffrl.utils.rng import Stream, stream_generator
from diffrl.workers.batch import RolloutBatch


def sol_batch(cfg: RLJobConfig, rollout: WorkerGroup, explore: WorkerGroup, rewards: list[WorkerGroup],
              prompts: list[dict], step: int, times: dict[str, float]) -> tuple[RolloutBatch, dict[str, float]]:
    """The step's training batch and its ranking-fidelity metrics. Advantages use only the regenerated rewards.
    Metrics: Kendall tau and Spearman rho between exploration and regenerated rewards of the chosen seeds (per
    prompt, averaged), and top-K agreement on an audited slice (audit_prompts whole pools regenerated in full
    precision; K = group_size / 2)."""
    sol = cfg.rollout.sol
    p, n, k = cfg.rollout.prompts_per_step, sol.pool_size, cfg.rollout.group_size
    pool_requests = step_requests(prompts, cfg, step, group_size=n)
    pool = generate_and_score(explore, rewards, pool_requests, times=times, stage="explore")
    explore_rewards = pool.rewards.view(p, n)
    chosen = select_seeds(explore_rewards, k, sol.select, stream_generator(Stream.SOL_SELECTION, cfg.seed, step))
    flat = (chosen + torch.arange(p)[:, None] * n).reshape(-1)
    if sol.regenerate:
        batch = generate_and_score(rollout, rewards, [pool_requests[i] for i in flat.tolist()], times=times,
                                   stage="regenerate")
    else:
        batch = pool.select(flat)
    chosen_explore = pool.rewards[flat].view(p, k)
    regen = batch.rewards.view(p, k)
    metrics = {
        "sol/explore_reward": float(pool.rewards.mean()),
        "sol/chosen_explore_reward": float(chosen_explore.mean()),
        # per prompt, averaged; nan when every prompt's rewards are constant (no ranking to compare)
        "sol/kendall_tau": _nanmean([kendall_tau(chosen_explore[i], regen[i]) for i in range(p)]),
        "sol/spearman_rho": _nanmean([spearman_rho(chosen_explore[i], regen[i]) for i in range(p)]),
    }
    audited = min(sol.audit_prompts, p) if sol.regenerate else 0
    if audited:
        audit = generate_and_score(rollout, rewards, pool_requests[: audited * n], times=times, stage="audit")
        full = audit.rewards.view(audited, n)
        metrics["sol/top_k_agreement"] = float(np.mean(
            [top_k_agreement(explore_rewards[i], full[i], max(1, k // 2)) for i in range(audited)]))
        metrics["sol/audit_kendall_tau"] = _nanmean([kendall_tau(explore_rewards[i], full[i]) for i in range(audited)])
    return batch, metrics


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
