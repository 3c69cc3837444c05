"""Group-relative advantages (GRPO-style) shared by Flow-GRPO, AWM and DiffusionNFT."""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    global_std: bool = False,
    eps: float = 1e-4,
    clip: float = 5.0,
    scale: float = 1.0,
) -> Tensor:
    """Per-group normalized rewards: (r - mean_group) / (std + eps), clamped to +-clip, then divided by scale.

    Matches Flow-GRPO's PerPromptStatTracker (yifan123/flow_grpo, flow_grpo/stat_tracking.py): the mean is per
    group, the std is the population std (numpy's ddof=0) of the group, or of the whole batch when global_std.
    A group of size one (or with equal rewards) gets advantage 0. AWM (scxue/advantage_weighted_matching) uses
    clip=5, scale=5 so that A lies in [-1, 1]. Statistics run in float64 like the numpy original.
    """
    if rewards.ndim != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D of the same length, got {tuple(rewards.shape)} and "
            f"{tuple(group_ids.shape)}"
        )
    if clip <= 0 or scale <= 0:
        raise ValueError(f"clip and scale must be positive, got clip={clip}, scale={scale}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    values = rewards.double()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    group_sums = torch.zeros(counts.numel(), dtype=torch.float64, device=values.device)
    group_means = group_sums.index_add(0, inverse, values) / counts
    centered = values - group_means[inverse]
    if global_std:
        std = values.std(correction=0)
    else:
        group_vars = group_sums.index_add(0, inverse, centered**2) / counts
        std = group_vars.sqrt()[inverse]
    advantages = (centered / (std + eps)).clamp(-clip, clip) / scale
    return advantages.to(out_dtype)
