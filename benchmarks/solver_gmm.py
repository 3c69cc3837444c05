"""Time-step schedules on a Gaussian mixture: the final-sample error of few-step SA-Solver sampling (tau = 0, the
deterministic multistep predictor-corrector) against the exact probability-flow ODE solution from the same noise,
for the optimized schedule (Xue et al., arXiv 2402.17376, scxue/DM-NonUniform; `timestep_opt`), uniform lambda and
uniform t. The mixture's denoiser is exact, so every error is the schedule's and the solver's, not a model's.

Usage: .venv/bin/python benchmarks/solver_gmm.py (prints markdown tables)
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import Tensor

from diffrl.algorithms.flow_matching import timestep_grid
from diffrl.algorithms.sa_solver import sa_solver_sample
from diffrl.algorithms.timestep_opt import (
    DEFAULT_LAMBDA_MAX,
    DEFAULT_LAMBDA_MIN,
    optimized_flow_grid,
    uniform_lambda_flow_grid,
)
from diffrl.envs.gaussian_mixture import GaussianMixture

SCHEDULES = ("optimized", "uniform_lambda", "uniform_t")
# (predictor_order, corrector_order) of SA-Solver; the schedule is optimized for the predictor's order.
SOLVER_ORDERS = ((3, 3), (3, 0), (2, 2), (2, 0))


def final_sample_error(mixture: GaussianMixture, grid: Tensor, noise: Tensor, exact: Tensor, predictor_order: int,
                       corrector_order: int) -> float:
    """Mean L2 distance between SA-Solver's samples on the flow `grid` (with the exact denoiser) and `exact`."""
    sigmas = grid.double()
    alphas = (1 - sigmas).tolist()
    sigmas = sigmas.tolist()
    samples = sa_solver_sample(lambda x, i: mixture.denoise(x, alphas[i], sigmas[i]), noise, alphas, sigmas,
                               predictor_order=predictor_order, corrector_order=corrector_order)
    return float((samples - exact).norm(dim=-1).mean())


def gmm_schedule_errors(nfes: Sequence[int] = (5, 6, 8, 10), solver_orders: Sequence[tuple[int, int]] = ((3, 3),),
                        num_components: int = 8, dim: int = 4, std_range: tuple[float, float] = (0.2, 0.5),
                        num_samples: int = 256, seed: int = 0, lambda_min: float = DEFAULT_LAMBDA_MIN,
                        lambda_max: float = DEFAULT_LAMBDA_MAX) -> list[dict]:
    """Per (predictor_order, corrector_order) and NFE: the final-sample error of each schedule in SCHEDULES, and
    the seconds the optimizer took. The mixture and the noise come from `seed`; each schedule starts from the same
    noise, and uniform lambda spans the optimizer's ends [lambda_min, lambda_max]."""
    generator = torch.Generator().manual_seed(seed)
    mixture = GaussianMixture.random(num_components, dim, generator, std_range=std_range)
    noise = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    exact = mixture.flow_ode_solution(noise)
    optimized: dict[tuple[int, int], tuple[Tensor, float]] = {}
    rows = []
    for predictor_order, corrector_order in solver_orders:
        for nfe in nfes:
            if (predictor_order, nfe) not in optimized:
                start = time.perf_counter()
                grid = optimized_flow_grid(nfe, predictor_order, lambda_min, lambda_max)
                optimized[predictor_order, nfe] = grid, time.perf_counter() - start
            grid, seconds = optimized[predictor_order, nfe]
            grids = {"optimized": grid, "uniform_lambda": uniform_lambda_flow_grid(nfe, lambda_min, lambda_max),
                     "uniform_t": timestep_grid(nfe)}
            errors = {name: final_sample_error(mixture, grids[name], noise, exact, predictor_order, corrector_order)
                      for name in SCHEDULES}
            rows.append({"nfe": nfe, "predictor_order": predictor_order, "corrector_order": corrector_order,
                         **errors, "optimize_seconds": seconds})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """One line per row: solver orders, NFE, each schedule's error (the smallest in bold), optimizer seconds."""
    lines = ["| predictor / corrector order | NFE | " + " | ".join(SCHEDULES) + " | optimizer (s) |",
             "|---" * (len(SCHEDULES) + 3) + "|"]
    for row in rows:
        best = min(row[name] for name in SCHEDULES)
        cells = [f"**{row[name]:.4f}**" if row[name] == best else f"{row[name]:.4f}" for name in SCHEDULES]
        lines.append(f"| {row['predictor_order']} / {row['corrector_order']} | {row['nfe']} | " + " | ".join(cells)
                     + f" | {row['optimize_seconds']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend
    print(markdown_table(gmm_schedule_errors(solver_orders=SOLVER_ORDERS)))
