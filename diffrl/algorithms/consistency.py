"""Consistency distillation of a flow model (Song et al., "Consistency Models", ICML 2023, arXiv 2303.01469), with the
flow-matching notation of `diffrl.algorithms.flow_matching` (x_t = (1 - t) x0 + t eps, the model's velocity v).

- The consistency function is f(x, t) = x - t v(x, t): the clean sample the velocity implies. It meets the boundary
  condition f(x, 0) = x exactly, and a student initialized from the teacher starts as the teacher's x0 prediction.
- Discretization: N + 1 times t_0 = t_min < t_1 < ... < t_N = 1, uniform in t. A row draws n in [0, N), noises its
  clean sample to t_{n+1}, takes one Euler step of the teacher's probability-flow ODE to t_n, and regresses the
  student's f at (x_{t_{n+1}}, t_{n+1}) onto the target network's f at (x^_{t_n}, t_n) (squared L2; the target
  network is an EMA of the student with decay mu, no gradient).
- With adversarial training (ICLR 2025, kugwzk/AT_Diff) the online input is x_{t_{n+1}} + delta; the target is a
  clean sample, so it is unchanged (the x0 parameterization of `diffrl.algorithms.adversarial`).
- Multistep sampling (Algorithm 1): x0 = f(x_T, T), then for each next time tau: x = (1 - tau) x0 + tau z and
  x0 = f(x, tau) — `ConsistencySolver` in `diffrl.algorithms.solvers`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discretization(num_steps: int, t_min: float = 2e-3) -> Tensor:
    """float32 times t_0 = t_min, ..., t_N = 1 (N = num_steps), uniform in t."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must be in (0, 1), got {t_min}")
    return torch.linspace(t_min, 1.0, num_steps + 1, dtype=torch.float64).float()


def consistency_function(x: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """f(x, t) = x - t v, with t per sample [B]."""
    return x - t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) * v


def teacher_step(x: Tensor, v_teacher: Tensor, t_from: Tensor, t_to: Tensor) -> Tensor:
    """One Euler step of the teacher's probability-flow ODE from t_from to t_to (per sample [B])."""
    shape = (-1, *([1] * (x.dim() - 1)))
    return x + (t_to - t_from).view(shape).to(x.dtype) * v_teacher
