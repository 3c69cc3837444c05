"""DiffusionNFT objective (Zheng et al., DiffusionNFT), as trained by Sol-RL (arXiv 2604.06916).

Follows NVlabs/Sana train_scripts/sol_rl/train_sd3.py (configs/sol_rl/sana.py: beta 1.0, train.beta 1e-4,
adv_clip_max 5, old policy = EMA with decay min(0.001 step, 0.5) applied once per epoch, see `awm.ema_decay`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.algorithms.awm import velocity_kl

_MIN_WEIGHT = 1e-5


def nft_loss(
    v_theta: Tensor,
    v_old: Tensor,
    v_ref: Tensor,
    x_t: Tensor,
    x0: Tensor,
    t: float | Tensor,
    advantages: Tensor,
    beta: float = 1.0,
    adv_clip: float = 5.0,
    kl_weight: float = 1e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative-aware fine-tuning loss for one training timestep per sample.

    r = clamp(clip(A, +-c) / c / 2 + 0.5, 0, 1); v+ = b v_theta + (1 - b) v_old, v- = (1 + b) v_old - b v_theta;
    x0_hat+- = x_t - t v+-; each squared error mean((x0_hat - x0)^2) is divided by the detached float64
    mean|x0_hat - x0| (floored at 1e-5). Loss = mean((r L+ + (1 - r) L-) / b) * c + kl_weight mean|v_theta - v_ref|^2,
    with c = adv_clip (the "* 5" is upstream's adv_clip_max). v_old and v_ref are treated as constants; t is the
    sigma per sample. Stats (detached): policy_loss, kl, old_deviation = mean (v_theta - v_old)^2.
    """
    if beta <= 0 or adv_clip <= 0:
        raise ValueError(f"beta and adv_clip must be positive, got beta={beta}, adv_clip={adv_clip}")
    v_theta, x_t, x0 = v_theta.float(), x_t.float(), x0.float()
    v_old = v_old.detach().float()
    t = torch.as_tensor(t, dtype=torch.float32, device=x0.device)
    if t.ndim == 1:
        t = t.view(-1, *([1] * (x0.ndim - 1)))

    clipped = advantages.float().clamp(-adv_clip, adv_clip)
    r = (clipped / adv_clip / 2.0 + 0.5).clamp(0.0, 1.0)
    v_positive = beta * v_theta + (1.0 - beta) * v_old
    v_negative = (1.0 + beta) * v_old - beta * v_theta
    positive_loss = _normalized_x0_error(x_t - t * v_positive, x0)
    negative_loss = _normalized_x0_error(x_t - t * v_negative, x0)
    policy_loss = ((r * positive_loss / beta + (1.0 - r) * negative_loss / beta) * adv_clip).mean()

    kl = velocity_kl(v_theta, v_ref.detach()).mean()
    loss = policy_loss + kl_weight * kl
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "kl": kl.detach(),
            "old_deviation": ((v_theta - v_old) ** 2).mean(),
        }
    return loss, stats


def _normalized_x0_error(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """[B] mean squared x0 error over the detached mean absolute error: an adaptive per-sample loss scale."""
    with torch.no_grad():
        weight = (x0_hat.double() - x0.double()).abs().flatten(1).mean(1).clamp_min(_MIN_WEIGHT)
    return ((x0_hat - x0) ** 2).flatten(1).mean(1) / weight
