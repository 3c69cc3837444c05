"""Flow-matching sampling steps with log-probabilities, time grids and training-timestep picks.

Notation: x_t = (1 - t) x0 + t eps, t = 1 is noise, the model predicts v ~ eps - x0, and one step goes from sigma
to sigma_next < sigma (dt = sigma_next - sigma < 0). Step math runs in float32 because bf16 overflows in the SDE
mean (yifan123/flow_grpo, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py). sigma / sigma_next may be Python
floats, 0-d tensors, or per-sample [B] tensors; a sigma of 0 is never a valid step start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class StepOutput:
    """One stochastic step.

    sample: x at sigma_next (drawn, or the given prev_sample). mean: the Gaussian mean of that transition.
    std: the noise scale upstream calls std_dev_t, shaped to broadcast over x. For `sde_step` the transition std is
    std * sqrt(sigma - sigma_next); for `cps_step` it is std itself. `flow_grpo_kl` expects this value, as
    Flow-GRPO's KL does. log_prob: [B] log density of sample, averaged over non-batch dimensions.
    """

    sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


def timestep_grid(num_steps: int, shift: float = 1.0) -> Tensor:
    """float32 sigmas from 1 to 0 (num_steps + 1 points): uniform s, then shifted.

    SD3 time shift s' = shift s / (1 + (shift - 1) s) (Esser et al. 2024). diffusers'
    FlowMatchEulerDiscreteScheduler spaces its grid from 1 to a shifted sigma_min and then appends 0, so its
    interior points differ slightly from these.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


def ode_step(x: Tensor, v: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """Euler step of the probability-flow ODE, x + v (sigma_next - sigma), in float32."""
    x = x.float()
    sigma_t, sigma_next_t = _per_sample(sigma, x), _per_sample(sigma_next, x)
    return x + v.float() * (sigma_next_t - sigma_t)


def sde_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    noise_level: float,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """Flow-GRPO's reverse SDE step (arXiv 2505.05470; flow_grpo sd3_sde_with_logprob.py, sde_type "sde").

    std = a sqrt(sigma / (1 - sigma)), with the next sigma in the denominator where sigma == 1 (upstream uses
    sigmas[1]); mean = x (1 + std^2 dt / (2 sigma)) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt; the sample is
    mean + std sqrt(-dt) noise. Pass `noise` to sample or `prev_sample` to score a stored step (training
    recomputation; the same inputs give bit-identical log-probs). With noise_level 0 the step is exactly
    `ode_step` and log_prob is defined as zeros (the density is degenerate).
    """
    x, v = x.float(), v.float()
    sigma_t, sigma_next_t = _per_sample(sigma, x), _per_sample(sigma_next, x)
    dt = sigma_next_t - sigma_t
    std = torch.sqrt(sigma_t / (1 - torch.where(sigma_t == 1, sigma_next_t, sigma_t))) * noise_level
    mean = x * (1 + std**2 / (2 * sigma_t) * dt) + v * (1 + std**2 * (1 - sigma_t) / (2 * sigma_t)) * dt
    step_std = std * torch.sqrt(-dt)
    sample = _sample_or_take(mean, step_std, noise, prev_sample)
    if noise_level == 0:
        log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    else:
        log_density = (
            -((sample.detach() - mean) ** 2) / (2 * step_std**2)
            - torch.log(step_std)
            - math.log(math.sqrt(2 * math.pi))
        )
        log_prob = log_density.flatten(1).mean(1)
    return StepOutput(sample=sample, mean=mean, std=std, log_prob=log_prob)


def cps_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    noise_level: float,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """Coefficients-preserving sampling step (arXiv 2509.05952; flow_grpo sde_type "cps").

    std = sigma_next sin(a pi / 2); x0_hat = x - sigma v; x1_hat = x + (1 - sigma) v;
    mean = x0_hat (1 - sigma_next) + x1_hat sqrt(sigma_next^2 - std^2); sample = mean + std noise.
    log_prob = -mean over non-batch dims of (sample - mean)^2, constants and the 1 / (2 std^2) scale dropped as
    upstream does. With noise_level 0 this equals the Euler step up to float rounding.
    """
    x, v = x.float(), v.float()
    sigma_t, sigma_next_t = _per_sample(sigma, x), _per_sample(sigma_next, x)
    std = sigma_next_t * math.sin(noise_level * math.pi / 2)
    x0_hat = x - sigma_t * v
    x1_hat = x + v * (1 - sigma_t)
    mean = x0_hat * (1 - sigma_next_t) + x1_hat * torch.sqrt(sigma_next_t**2 - std**2)
    sample = _sample_or_take(mean, std, noise, prev_sample)
    log_prob = -((sample.detach() - mean) ** 2).flatten(1).mean(1)
    return StepOutput(sample=sample, mean=mean, std=std, log_prob=log_prob)


def sde_window(
    num_steps: int, window_size: int, generator: torch.Generator, max_start: int | None = None
) -> int:
    """First step index of Flow-GRPO-Fast's SDE window; steps [start, start + window_size) are stochastic.

    Upstream draws start = random.randint(lo, hi - window_size) (inclusive) with sde_window_range
    (lo, hi) = (0, num_steps // 2) (flow_grpo config/grpo.py *_fast_nocfg, sd3_pipeline_with_logprob_fast.py), so
    the default max_start is num_steps // 2 - window_size and the window stays in the first half.
    """
    if max_start is None:
        max_start = num_steps // 2 - window_size
    if window_size < 1 or max_start < 0 or max_start + window_size > num_steps:
        raise ValueError(
            f"no SDE window of size {window_size} fits: num_steps={num_steps}, max_start={max_start}"
        )
    return int(torch.randint(0, max_start + 1, (1,), generator=generator).item())


def stratified_timesteps(
    grid: Tensor,
    num: int,
    generator: torch.Generator,
    *,
    fraction: float = 0.9,
    include_first: bool = False,
) -> Tensor:
    """AWM's training timesteps: one random grid point from each of `num` strata of the rollout grid.

    Eligible step indices are [lo, int(num_steps * fraction)) with lo = 0 if include_first else 1 (sigma = 1 is
    skipped); they are split at floor(lo + k (hi - lo) / num) and one index is drawn uniformly per stratum
    (scxue/advantage_weighted_matching, scripts/train_sd3_awm.py, time_type "discrete_wo_init" for GenEval/OCR,
    "discrete" = include_first for PickScore; train_timesteps 6, timestep_fraction 0.9). Upstream draws one set
    per training micro-batch and shares it across the micro-batch's samples. Returns the sigmas, in stratum order.
    """
    num_steps = grid.numel() - 1
    low = 0 if include_first else 1
    high = int(num_steps * fraction)
    if num < 1 or num > high - low:
        raise ValueError(
            f"cannot draw {num} strata from grid step indices [{low}, {high}) "
            f"(num_steps={num_steps}, fraction={fraction})"
        )
    edges = [low + (k * (high - low)) // num for k in range(num + 1)]
    lower = torch.tensor(edges[:-1])
    width = torch.tensor(edges[1:]) - lower
    uniform = torch.rand(num, generator=generator, dtype=torch.float64)
    indices = lower + (uniform * width).long()
    return grid[indices.to(grid.device)]


def _per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """value as float32, a [B] tensor reshaped to [B, 1, ..., 1] so it broadcasts over `like`."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 1:
        value = value.view(-1, *([1] * (like.ndim - 1)))
    return value


def _sample_or_take(mean: Tensor, std: Tensor, noise: Tensor | None, prev_sample: Tensor | None) -> Tensor:
    if (noise is None) == (prev_sample is None):
        raise ValueError("pass exactly one of noise (to sample a step) or prev_sample (to score a stored step)")
    if prev_sample is not None:
        return prev_sample.float()
    return mean + std * noise.float()


def seeded_interpolation(x0: Tensor, seeds: list[int]) -> tuple[Tensor, Tensor]:
    """Per-row t ~ U(0, 1) [N] and noise eps (x0's shape) drawn from a generator seeded by each row's seed alone, so
    rows never depend on how a batch was split (the supervised objectives' draws)."""
    ts, eps = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        ts.append(torch.rand(1, generator=gen))
        eps.append(torch.randn(x0.shape[1:], generator=gen))
    return torch.cat(ts), torch.stack(eps)
