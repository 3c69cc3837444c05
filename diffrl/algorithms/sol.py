"""Sol-RL's contrastive seed selection and the ranking-fidelity statistics (arXiv 2604.06916; NVlabs/Sana
train_scripts/sol_rl): a cheap low-precision pool of N seeds per prompt is scored, K seeds are chosen per prompt,
and only those are regenerated in full precision.

Selection rules (per prompt, on the exploration rewards):
- best_worst: the K/2 highest and K/2 lowest rewards (Sol-RL's default);
- mean_deviation: the K rewards farthest from the prompt's mean;
- random: K seeds uniformly at random (the control).
Ties are broken by pool position (stable sorts), so a selection is deterministic.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import Tensor

SELECTIONS = ("best_worst", "mean_deviation", "random")


def select_seeds(rewards: Tensor, k: int, rule: str, generator: torch.Generator | None = None) -> Tensor:
    """Indices [P, k] into each prompt's pool (rewards [P, N]), in increasing pool order."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [prompts, pool], got {tuple(rewards.shape)}")
    n = rewards.shape[1]
    if not 0 < k <= n:
        raise ValueError(f"cannot choose {k} seeds from a pool of {n}")
    if rule == "best_worst":
        if k % 2:
            raise ValueError(f"best_worst chooses k/2 best and k/2 worst; k={k} must be even")
        order = torch.sort(rewards, dim=1, descending=True, stable=True).indices
        chosen = torch.cat([order[:, : k // 2], order[:, n - k // 2 :]], dim=1)
    elif rule == "mean_deviation":
        deviation = (rewards - rewards.mean(dim=1, keepdim=True)).abs()
        chosen = torch.sort(deviation, dim=1, descending=True, stable=True).indices[:, :k]
    elif rule == "random":
        chosen = torch.stack([torch.randperm(n, generator=generator)[:k] for _ in range(rewards.shape[0])])
    else:
        raise ValueError(f"rollout.sol.select: unknown rule {rule!r}; allowed: {list(SELECTIONS)}")
    return torch.sort(chosen, dim=1).values


def spearman_rho(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr, average ranks for ties); nan when either side is
    constant."""
    return _rank_statistic(stats.spearmanr, a, b)


def kendall_tau(a: Tensor, b: Tensor) -> float:
    """Kendall's tau-b (scipy.stats.kendalltau, ties corrected); nan when either side is constant."""
    return _rank_statistic(stats.kendalltau, a, b)


def _rank_statistic(statistic, a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten().numpy(), b.double().flatten().numpy()
    if a.shape != b.shape:
        raise ValueError(f"rank statistics need equal lengths, got {a.size} and {b.size}")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(statistic(a, b).statistic)


def top_k_agreement(explore: Tensor, reference: Tensor, k: int) -> float:
    """Share of the k best seeds by the exploration reward that are among the k best by the reference reward."""
    if not 0 < k <= explore.numel():
        raise ValueError(f"k={k} must be in [1, {explore.numel()}]")
    top_explore = set(torch.sort(explore, descending=True, stable=True).indices[:k].tolist())
    top_reference = set(torch.sort(reference, descending=True, stable=True).indices[:k].tolist())
    return len(top_explore & top_reference) / k
