"""Seeded sampling of a flow model with a solver (ODE, Flow-GRPO SDE, CPS, SA-Solver), one sample a function of its seed
alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from diffrl.algorithms.flow_matching import sde_window, timestep_grid
from diffrl.algorithms.mixgrpo import compressed_tail, dpmpp_2m_step
from diffrl.algorithms.solvers import build_solver
from diffrl.models.adapter import Conditioning, ModelAdapter
from diffrl.utils.rng import Stream, stream_generator


@dataclass
class SampleResult:
    samples: torch.Tensor  # clean x0 [N, C, H, W]
    grid: torch.Tensor  # [S + 1]
    # Flow-GRPO trajectories (store_trajectory=True): for each sample its K stochastic steps, in step order.
    latents: torch.Tensor | None = None  # x at sigma_j [N, K, C, H, W]
    next_latents: torch.Tensor | None = None  # the drawn x at sigma_{j+1} [N, K, C, H, W]
    log_probs: torch.Tensor | None = None  # log density of each drawn step [N, K]
    step_index: torch.Tensor | None = None  # j of each stored step [N, K] (long)
    nfe: int = 0  # model calls per sample (a guided call counts once)


def step_noise(seeds: Sequence[int], step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-sample SDE noise for sampler step `step`: a function of (seed, step) only, never of the batch."""
    return torch.stack(
        [torch.randn(shape, generator=stream_generator(Stream.SDE_NOISE, seed, step)) for seed in seeds]
    )


def stochastic_steps(seeds: Sequence[int], stochastic: Sequence[bool], window: int = 0,
                     starts: Sequence[int] | None = None) -> torch.Tensor:
    """bool [N, num_steps]: which sampler steps draw noise for each sample.

    `stochastic` is the solver's per-step answer (`Solver.stochastic`: none for the ODE; every step but the last for
    SDE/CPS, so samples end clean). With `window` > 0 (Flow-GRPO-Fast) only `window` consecutive steps starting at
    `sde_window(...)` draw noise, the start drawn from a generator seeded by the sample's seed, so each sample's
    window depends on its seed alone; `starts` gives each sample's window start instead (MixGRPO's window, set by
    the RL step).
    """
    num_steps = len(stochastic)
    allowed = torch.tensor(stochastic, dtype=torch.bool)
    if window == 0 or not allowed.any():
        return allowed.expand(len(seeds), num_steps).clone()
    mask = torch.zeros(len(seeds), num_steps, dtype=torch.bool)
    for row, seed in enumerate(seeds):
        if starts is not None:
            start = int(starts[row])
            if not (0 <= start <= num_steps - window and allowed[start:start + window].all()):
                raise ValueError(f"SDE window start {start} of size {window} does not fit the {num_steps} steps' "
                                 "stochastic ones (the last step is deterministic)")
        else:
            start = sde_window(num_steps, window, stream_generator(Stream.SDE_WINDOW, seed))
        mask[row, start : start + window] = True
    return mask & allowed


@torch.no_grad()
def sample(
    model: ModelAdapter,
    cond: Conditioning,
    seeds: Sequence[int],
    num_steps: int | None = None,
    sampler: str = "ode",
    noise_level: float = 0.7,
    guidance_scale: float = 1.0,
    null_cond: Conditioning | None = None,
    autocast_dtype: torch.dtype | None = None,
    sde_window: int = 0,
    store_trajectory: bool = False,
    grid: torch.Tensor | Sequence[float] | None = None,
    solver_options: dict | None = None,
    window_starts: Sequence[int] | None = None,
    tail_compress: float | None = None,
) -> SampleResult:
    """Integrate from the seeds' noise at t=1 to t=0 with solver `sampler` (`build_solver`), on the model's device.

    The time grid is `grid` (from 1 to 0, see `solvers.check_grid`) or else the even grid of `num_steps` steps. Noise is
    drawn on the CPU from per-seed generators (identical on every device), and samples return on the CPU. The last
    step is always deterministic, so SDE samples end clean. With `store_trajectory`, every stochastic step's input
    latent, drawn latent and log-prob are returned for Flow-GRPO (see `stochastic_steps` for which steps those are).
    `solver_options` go to solvers other than sde/cps (which take `noise_level`), e.g. sa_solver's orders and tau.
    `window_starts` fixes each sample's SDE window start (MixGRPO); with `tail_compress` (MixGRPO-Flash; one start
    shared by all samples) the steps after the window run DPM-Solver++ (2M) on the compressed grid of
    `mixgrpo.compressed_tail` instead of the solver's own steps. `SampleResult.nfe` counts the model calls.
    """
    if grid is None:
        if num_steps is None:
            raise ValueError("sample needs num_steps or a grid")
        grid = timestep_grid(num_steps)
    options = {"noise_level": noise_level} if sampler in ("sde", "cps") else dict(solver_options or {})
    solver = build_solver(sampler, **options)
    if not solver.memoryless and (sde_window or store_trajectory):
        raise ValueError(f"sampler {sampler} takes every step once for all rows: it has no sde_window and stores "
                         "no Flow-GRPO trajectory")
    solver.set_timesteps(grid)
    if num_steps is not None and num_steps != solver.num_steps:
        raise ValueError(f"num_steps={num_steps} disagrees with the grid's {solver.num_steps} steps; pass one")
    num_steps = solver.num_steps
    device = next(model.denoiser.parameters()).device
    mask = stochastic_steps(seeds, solver.stochastic, sde_window, window_starts)
    tail_from = num_steps
    if tail_compress is not None:
        if window_starts is None or len(set(window_starts)) != 1 or not solver.memoryless:
            raise ValueError("tail_compress (MixGRPO-Flash) needs one window start shared by all samples and an "
                             "sde or cps sampler")
        tail_from = int(window_starts[0]) + sde_window
    x = model.initial_noise(seeds).to(device)
    trajectory: dict[str, list] = {"latents": [], "next_latents": [], "log_probs": [], "step_index": []}
    for index in range(tail_from):
        t = torch.full((len(seeds),), float(solver.sigmas[index]), device=device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            v = model.velocity(x, t, cond, guidance_scale=guidance_scale, null_cond=null_cond).float()
        rows = mask[:, index]
        if not solver.memoryless:  # one step for every row, with its noise where the solver is stochastic
            noise = step_noise(seeds, index, x.shape[1:]).to(device) if rows.any() else None
            x = solver.step(v, index, x, noise=noise).prev_sample
            continue
        x_next = solver.step(v, index, x).prev_sample
        if rows.any():  # these rows take the stochastic step of the same model call; the others keep x_next
            noise = step_noise(seeds, index, x.shape[1:]).to(device)
            out = solver.step(v, index, x, noise=noise)
            picked = rows.to(device).view(-1, *([1] * (x.dim() - 1)))
            drawn = torch.where(picked, out.prev_sample, x_next)
            if store_trajectory:
                trajectory["latents"].append(x.cpu())
                trajectory["next_latents"].append(drawn.cpu())
                trajectory["log_probs"].append(out.log_prob.cpu())
                trajectory["step_index"].append(torch.full((len(seeds),), index, dtype=torch.long))
            x_next = drawn
        x = x_next
    nfe = tail_from
    if tail_from < num_steps:
        x, calls = _dpm_tail(model, cond, x, solver.sigmas, compressed_tail(tail_from, num_steps, tail_compress),
                             guidance_scale, null_cond, autocast_dtype)
        nfe += calls
    result = SampleResult(samples=x.cpu(), grid=solver.sigmas, nfe=nfe)
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


def _dpm_tail(model: ModelAdapter, cond: Conditioning, x: torch.Tensor, sigmas: torch.Tensor, indices: list[int],
              guidance_scale: float, null_cond: Conditioning | None,
              autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, int]:
    """MixGRPO-Flash's post-window ODE: DPM-Solver++ (2M) through sigmas[indices] (data prediction x - sigma v),
    first order on its first step; returns the sample and the model calls made."""
    device = x.device
    prev_x0, prev_sigma, calls = None, None, 0
    for here, there in zip(indices[:-1], indices[1:]):
        sigma, sigma_next = float(sigmas[here]), float(sigmas[there])
        t = torch.full((x.shape[0],), sigma, device=device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            v = model.velocity(x, t, cond, guidance_scale=guidance_scale, null_cond=null_cond).float()
        calls += 1
        x0 = x.float() - sigma * v
        x = dpmpp_2m_step(x, x0, sigma, sigma_next, prev_x0, prev_sigma)
        prev_x0, prev_sigma = x0, sigma
    return x, calls
