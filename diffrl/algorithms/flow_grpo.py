"""Flow-GRPO policy loss and KL (Liu et al., arXiv 2505.05470; yifan123/flow_grpo, scripts/train_sd3.py)."""

from __future__ import annotations

import torch
from torch import Tensor


def flow_grpo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float = 1e-4,
    clip_range_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate mean(max(-A r, -A clip(r, 1 - eps, 1 + eps_high))), r = exp(logp - logp_old).

    As upstream's train loop for one denoising step: log-probs [B] from `sde_step`/`cps_step`, eps_high defaults to
    eps. Stats (detached): clipfrac (ratio outside the clip band), approx_kl = 0.5 mean((logp - logp_old)^2),
    ratio_mean. The KL penalty is separate (`flow_grpo_kl`, weighted by beta by the caller).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        outside = (ratio - 1.0 > high) | (1.0 - ratio > clip_range)
        stats = {
            "clipfrac": outside.float().mean(),
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "ratio_mean": ratio.mean(),
        }
    return loss, stats


def flow_grpo_kl(mean: Tensor, ref_mean: Tensor, std: Tensor | float) -> Tensor:
    """[B] mean over non-batch dims of (mean - ref_mean)^2, divided by 2 std^2.

    std is `StepOutput.std` (upstream's std_dev_t, without the sqrt(-dt) factor): Flow-GRPO computes the KL this
    way, so its beta values (0.04 GenEval/OCR, 0.01 PickScore) carry over.
    """
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    squared = ((mean.float() - ref_mean.float()) ** 2).flatten(1).mean(1)
    return squared / (2 * std.flatten() ** 2)
