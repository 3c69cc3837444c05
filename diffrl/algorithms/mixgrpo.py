"""MixGRPO (Li et al., arXiv 2507.21802; Tencent-Hunyuan/MixGRPO): SDE only inside a window of `size` sampler steps
that slides along the trajectory as training goes on, the ODE elsewhere, and training only on the window's steps.

The window (fastvideo/utils/grpo_states.py, the "progressive" strategy) starts at step 0 and moves by `stride`
every `shift_every` RL steps; past `max_start` it wraps to 0 (`roll_back`) or stays there. MixGRPO-Flash
integrates the steps after the window with DPM-Solver++ (2M, midpoint; fastvideo/utils/sampling_utils.py) on a
compressed grid, fewer model calls than the window's first-order steps would need.
"""

from __future__ import annotations

import math

from torch import Tensor


def window_start(step: int, shift_every: int, stride: int, max_start: int, roll_back: bool = True) -> int:
    """The window's first sampler step at RL step `step` (0-based): (step // shift_every) * stride, wrapped modulo
    max_start + 1 with roll_back, else capped at max_start. stride 0 freezes the window at step 0."""
    if shift_every < 1 or stride < 0 or max_start < 0:
        raise ValueError(f"bad MixGRPO window schedule: shift_every={shift_every}, stride={stride}, "
                         f"max_start={max_start}")
    start = (step // shift_every) * stride
    return start % (max_start + 1) if roll_back else min(start, max_start)


def compressed_tail(first: int, num_steps: int, compress: float) -> list[int]:
    """Grid indices the post-window ODE visits, from `first` (the window's end) to num_steps (sigma 0): the
    remaining num_steps - first steps cut to max(int((num_steps - first) * compress), 1), evenly spaced on the
    grid (upstream respaces its shifted schedule the same way: int(max(remaining * ratio, 1)) points)."""
    remaining = num_steps - first
    if remaining < 1:
        return [num_steps]
    count = max(int(remaining * compress), 1)
    return sorted({round(first + k * remaining / count) for k in range(count + 1)})


def dpmpp_2m_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, prev_x0: Tensor | None = None,
                  prev_sigma: float | None = None) -> Tensor:
    """One DPM-Solver++ multistep step (Lu et al., arXiv 2211.01095; diffusers' DPMSolverMultistepScheduler,
    midpoint) for x_t = (1 - sigma) x0 + sigma eps, from data predictions x0 (at sigma) and prev_x0 (at
    prev_sigma, the step before; None: first order). lambda = log((1 - sigma) / sigma); to sigma_next 0 the step
    returns x0 (the final step is first order, as diffusers' lower_order_final)."""
    x, x0 = x.float(), x0.float()
    if sigma_next <= 0:
        return x0
    lam = lambda s: math.log((1 - s) / s)  # noqa: E731
    h = lam(sigma_next) - lam(sigma)
    alpha_next = 1 - sigma_next
    first = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * x0
    if prev_x0 is None or prev_sigma is None:
        return first
    r = (lam(sigma) - lam(prev_sigma)) / h
    d1 = (x0 - prev_x0.float()) / r
    return first - 0.5 * alpha_next * math.expm1(-h) * d1
