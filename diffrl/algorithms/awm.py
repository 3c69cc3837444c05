"""Advantage Weighted Matching (Xue et al., arXiv 2509.25050; scxue/advantage_weighted_matching).

AWM trains on final samples only: for each sample and training timestep t it noises x0 with fresh eps, scores the
velocity with a flow-matching "log-prob" proxy and weights it by the advantage. The KL to the base model and the
trust region to an EMA copy are `velocity_kl` terms. References below are to
advantage_weighted_matching/scripts/train_sd3_awm.py and config/dgx_awm.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

_HUBER_EPS = 1e-10


def awm_log_prob(v_pred: Tensor, x0: Tensor, eps: Tensor, t: float | Tensor, huber_p: float = 0.25) -> Tensor:
    """[B] float64 log-prob proxy -((mse + 1e-10)^p - 1e-10^p) * t / p.

    mse is the mean over non-batch dims of (v_pred - (eps - x0))^2, reduced in float64. This is upstream's "ghuber"
    weighting (compute_log_prob_awm, ghuber_power 0.25): t (the sigma in [0, 1], one per sample) multiplies after
    the power. p = 1 gives the plain t-weighted flow-matching loss; p < 1 damps samples with a large error.
    """
    if huber_p <= 0:
        raise ValueError(f"huber_p must be positive, got {huber_p}")
    target = eps.double() - x0.double()
    mse = ((v_pred.double() - target) ** 2).flatten(1).mean(1)
    t = torch.as_tensor(t, dtype=torch.float64, device=mse.device).reshape(-1)
    return -((mse + _HUBER_EPS) ** huber_p - _HUBER_EPS**huber_p) * t / huber_p


def awm_loss(log_prob: Tensor, advantages: Tensor) -> Tensor:
    """Policy term mean(-A * exp(logp - logp.detach())): value mean(-A), gradient mean(-A * grad logp).

    Upstream (loss_type "exp_first") forms the PPO ratio against old log-probs that, on-policy, are the same
    forward's log_prob detached, so the ratio is exactly 1 and its clip (clip_range 1) never binds; we write that
    directly. advantages must broadcast to log_prob (e.g. [B] against [T, B]); positive A lowers the matching error.
    """
    ratio = torch.exp(log_prob - log_prob.detach())
    return (-advantages * ratio).mean()


def velocity_kl(v_pred: Tensor, v_ref: Tensor) -> Tensor:
    """[B] mean over non-batch dims of (v_pred - v_ref)^2: AWM's "Uniform" KL to the base or EMA model."""
    return ((v_pred.float() - v_ref.float()) ** 2).flatten(1).mean(1)


def ema_decay(step: int, rate: float = 0.001, max_decay: float = 0.3) -> float:
    """Linear EMA warm-up min(max_decay, rate * step): AWM's EMA trust-region adapter (kl_ema_decay_type "linear",
    kl_ema_decay 0.3); DiffusionNFT's old policy uses max_decay 0.5 (Sol-RL decay_type 1)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(max_decay, rate * step)


@torch.no_grad()
def ema_update_(ema_params: Iterable[Tensor], params: Iterable[Tensor], decay: float) -> None:
    """In place: ema <- decay * ema + (1 - decay) * param, so decay 0 copies the live weights."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for ema_param, param in zip(ema_params, params, strict=True):
        ema_param.mul_(decay).add_(param.detach().to(ema_param.dtype), alpha=1.0 - decay)
