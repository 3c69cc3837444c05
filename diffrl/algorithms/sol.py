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

import torch
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


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), 1-based, float64."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for value in torch.unique(x):
        tied = x == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks); nan when either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = torch.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def kendall_tau(a: Tensor, b: Tensor) -> float:
    """Kendall's tau-b (ties corrected, as scipy.stats.kendalltau's default); nan when either side is constant."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.shape != b.shape:
        raise ValueError(f"kendall_tau needs equal lengths, got {a.numel()} and {b.numel()}")
    i, j = torch.triu_indices(len(a), len(a), offset=1)
    da, db = torch.sign(a[i] - a[j]), torch.sign(b[i] - b[j])
    concordant_minus_discordant = (da * db).sum()
    pairs_a, pairs_b = (da != 0).sum(), (db != 0).sum()
    denominator = torch.sqrt(pairs_a.double() * pairs_b.double())
    return float(concordant_minus_discordant / denominator) if denominator > 0 else float("nan")


def top_k_agreement(explore: Tensor, reference: Tensor, k: int) -> float:
    """Share of the k best seeds by the exploration reward that are among the k best by the reference reward."""
    if not 0 < k <= explore.numel():
        raise ValueError(f"k={k} must be in [1, {explore.numel()}]")
    top_explore = set(torch.sort(explore, descending=True, stable=True).indices[:k].tolist())
    top_reference = set(torch.sort(reference, descending=True, stable=True).indices[:k].tolist())
    return len(top_explore & top_reference) / k
