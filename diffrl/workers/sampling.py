"""Seeded sampling of a flow model: deterministic ODE or Flow-GRPO SDE, one sample a function of its seed alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from diffrl.algorithms.flow_matching import ode_step, sde_step, timestep_grid
from diffrl.models.adapter import Conditioning, ModelAdapter


@dataclass
class SampleResult:
    samples: torch.Tensor  # clean x0 [N, C, H, W]
    grid: torch.Tensor  # [S + 1]


def step_noise(seeds: Sequence[int], step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-sample SDE noise for sampler step `step`: a function of (seed, step) only, never of the batch."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + step + 1)) for seed in seeds]
    )


@torch.no_grad()
def sample(
    model: ModelAdapter,
    cond: Conditioning,
    seeds: Sequence[int],
    num_steps: int,
    sampler: str = "ode",
    noise_level: float = 0.7,
    guidance_scale: float = 1.0,
    null_cond: Conditioning | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> SampleResult:
    """Integrate from the seeds' noise at t=1 to t=0 on an even grid of `num_steps` steps, on the model's device.

    Noise is drawn on the CPU from per-seed generators (identical on every device), and samples return on the CPU.
    The last step is always the ODE step, so SDE samples end clean (Flow-GRPO adds noise there too; in pixel space
    that noise would be visible and scored).
    """
    device = next(model.denoiser.parameters()).device
    grid = timestep_grid(num_steps)
    x = model.initial_noise(seeds).to(device)
    for index in range(num_steps):
        sigma, sigma_next = float(grid[index]), float(grid[index + 1])
        t = torch.full((len(seeds),), sigma, device=device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            v = model.velocity(x, t, cond, guidance_scale=guidance_scale, null_cond=null_cond).float()
        if sampler == "sde" and sigma_next > 0:
            noise = step_noise(seeds, index, x.shape[1:]).to(device)
            x = sde_step(x, v, sigma, sigma_next, noise_level, noise=noise).sample
        else:
            x = ode_step(x, v, sigma, sigma_next)
    return SampleResult(samples=x.cpu(), grid=grid)
