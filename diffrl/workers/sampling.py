"""Seeded sampling of a flow model: deterministic ODE or Flow-GRPO SDE, one sample a function of its seed alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from diffrl.algorithms.flow_matching import cps_step, ode_step, sde_step, sde_window, timestep_grid
from diffrl.models.adapter import Conditioning, ModelAdapter


@dataclass
class SampleResult:
    samples: torch.Tensor  # clean x0 [N, C, H, W]
    grid: torch.Tensor  # [S + 1]
    # Flow-GRPO trajectories (store_trajectory=True): for each sample its K stochastic steps, in step order.
    latents: torch.Tensor | None = None  # x at sigma_j [N, K, C, H, W]
    next_latents: torch.Tensor | None = None  # the drawn x at sigma_{j+1} [N, K, C, H, W]
    log_probs: torch.Tensor | None = None  # log density of each drawn step [N, K]
    step_index: torch.Tensor | None = None  # j of each stored step [N, K] (long)


def step_noise(seeds: Sequence[int], step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-sample SDE noise for sampler step `step`: a function of (seed, step) only, never of the batch."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + step + 1)) for seed in seeds]
    )


def stochastic_steps(seeds: Sequence[int], num_steps: int, sampler: str, window: int = 0) -> torch.Tensor:
    """bool [N, num_steps]: which sampler steps draw noise for each sample.

    ODE: none. SDE/CPS: every step but the last (which stays deterministic so samples end clean), or with
    `window` > 0 (Flow-GRPO-Fast) `window` consecutive steps starting at `sde_window(...)` drawn from a generator
    seeded by the sample's seed, so each sample's window depends on its seed alone.
    """
    mask = torch.zeros(len(seeds), num_steps, dtype=torch.bool)
    if sampler == "ode":
        return mask
    if window == 0:
        mask[:, : num_steps - 1] = True
        return mask
    for row, seed in enumerate(seeds):
        start = sde_window(num_steps, window, torch.Generator().manual_seed(int(seed) * 7 + 3))
        mask[row, start : start + window] = True
    return mask


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
    sde_window: int = 0,
    store_trajectory: bool = False,
) -> SampleResult:
    """Integrate from the seeds' noise at t=1 to t=0 on an even grid of `num_steps` steps, on the model's device.

    Noise is drawn on the CPU from per-seed generators (identical on every device), and samples return on the CPU.
    The last step is always the ODE step, so SDE samples end clean (Flow-GRPO adds noise there too; in pixel space
    that noise would be visible and scored). With `store_trajectory`, every stochastic step's input latent, drawn
    latent and log-prob are returned for Flow-GRPO (see `stochastic_steps` for which steps those are).
    """
    if sampler not in ("ode", "sde", "cps"):
        raise ValueError(f"sampler must be ode, sde or cps, got {sampler!r}")
    device = next(model.denoiser.parameters()).device
    grid = timestep_grid(num_steps)
    mask = stochastic_steps(seeds, num_steps, sampler, sde_window)
    step_fn = sde_step if sampler == "sde" else cps_step
    x = model.initial_noise(seeds).to(device)
    trajectory: dict[str, list] = {"latents": [], "next_latents": [], "log_probs": [], "step_index": []}
    for index in range(num_steps):
        sigma, sigma_next = float(grid[index]), float(grid[index + 1])
        t = torch.full((len(seeds),), sigma, device=device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            v = model.velocity(x, t, cond, guidance_scale=guidance_scale, null_cond=null_cond).float()
        rows = mask[:, index]
        x_next = ode_step(x, v, sigma, sigma_next)
        if rows.any():
            noise = step_noise(seeds, index, x.shape[1:]).to(device)
            out = step_fn(x, v, sigma, sigma_next, noise_level, noise=noise)
            picked = rows.to(device).view(-1, *([1] * (x.dim() - 1)))
            drawn = torch.where(picked, out.sample, x_next)
            if store_trajectory:
                trajectory["latents"].append(x.cpu())
                trajectory["next_latents"].append(drawn.cpu())
                trajectory["log_probs"].append(out.log_prob.cpu())
                trajectory["step_index"].append(torch.full((len(seeds),), index, dtype=torch.long))
            x_next = drawn
        x = x_next
    result = SampleResult(samples=x.cpu(), grid=grid)
    if store_trajectory:
        if not trajectory["latents"]:
            raise ValueError("store_trajectory needs stochastic steps: use sampler sde or cps")
        # Every sample has the same number of stochastic steps; keep, per sample, only its own ones.
        stacked = {key: torch.stack(values, dim=1) for key, values in trajectory.items()}
        keep = mask[:, stacked["step_index"][0]]  # [N, steps where any sample was stochastic]
        count = int(keep[0].sum())
        for key, value in stacked.items():
            setattr(result, key, value[keep].reshape(len(seeds), count, *value.shape[2:]))
    return result
