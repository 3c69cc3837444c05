"""GRPO-Guard (Wang et al., arXiv 2510.22319, "Mitigating Implicit Over-Optimization in Flow Matching via Regulated
Clipping"): ratio normalization (RatioNorm, the paper's Eq. 8) and per-step gradient reweighting (Eq. 12) on top
of Flow-GRPO's clipped surrogate. Checked against verl-project/verl-omni (diffusion_algos.py, GRPOGuardLoss).

Write a stored transition as x = mu_old + s eps, with s the transition std and dmu = mu_theta - mu_old. Flow-GRPO's
log-ratio (per-dimension means, as its log-probs are) is then

- sde (Gaussian log-density): log r = mean(eps dmu) / s - mean(dmu^2) / (2 s^2);
- cps (log-prob -mean (x - mu)^2, no scale): log r = 2 s mean(eps dmu) - mean(dmu^2).

Its mean is negative (the "left shift": positive-advantage samples never reach the upper clip) and its spread
depends on s, which differs across timesteps. RatioNorm removes the analytic shift and rescales, so that in both
cases log r_hat = mean(eps dmu): centred at 0 and on the same scale at every step. Gradient reweighting multiplies
each step's policy loss by 1 / |dt| (Flow-GRPO's beta_t constant), equalizing the steps' gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ratio_norm_log_ratio(log_ratio: Tensor, mean: Tensor, old_mean: Tensor, step_std: Tensor, sampler: str) -> Tensor:
    """[B] normalized log-ratio: sde: s (log r + mean(dmu^2) / (2 s^2)); cps: (log r + mean(dmu^2)) / (2 s).

    `mean` carries the gradient (the policy's step mean), `old_mean` is the rollout policy's; `step_std` is the
    transition std s (sde: StepOutput.std * sqrt(-dt); cps: StepOutput.std), broadcastable over the means.
    """
    if sampler not in ("sde", "cps"):
        raise ValueError(f"ratio normalization needs an sde or cps step, got {sampler!r}")
    s = torch.as_tensor(step_std, dtype=torch.float32, device=mean.device).expand_as(mean).flatten(1)[:, 0]
    shift = ((mean.float() - old_mean.float()) ** 2).flatten(1).mean(1)
    if sampler == "sde":
        return s * (log_ratio + shift / (2 * s**2))
    return (log_ratio + shift) / (2 * s)


def step_weights(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """[B] gradient reweighting 1 / |dt| = 1 / (sigma - sigma_next) of each row's step (Eq. 12, Flow-GRPO form)."""
    dt = (torch.as_tensor(sigma, dtype=torch.float32) - torch.as_tensor(sigma_next, dtype=torch.float32)).reshape(-1)
    if (dt <= 0).any():
        raise ValueError("step_weights needs sigma > sigma_next on every row")
    return 1.0 / dt


def guarded_loss(log_ratio: Tensor, advantages: Tensor, weights: Tensor, clip_range: float,
                 clip_range_high: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """mean(w * max(-A r, -A clip(r, 1 - eps, 1 + eps_high))) with r = exp(log_ratio) (the normalized one).

    Stats (detached): clipfrac, ratio_mean, and the mean log-ratio (0 in expectation after RatioNorm)."""
    high = clip_range if clip_range_high is None else clip_range_high
    ratio = torch.exp(log_ratio)
    per_row = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high))
    loss = (weights * per_row).mean()
    with torch.no_grad():
        outside = (ratio - 1.0 > high) | (1.0 - ratio > clip_range)
        stats = {"clipfrac": outside.float().mean(), "ratio_mean": ratio.mean(), "log_ratio_mean": log_ratio.mean()}
    return loss, stats
