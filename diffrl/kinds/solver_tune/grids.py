"""The time grids a solver_tune candidate can sample on: uniform in sigma (SD3-shifted), uniform in log-SNR,
DM-NonUniform's optimized steps (Xue et al., CVPR 2024; scxue/DM-NonUniform) and a data-driven search that, for the
actual model, minimises the distance between this sampler's few-step samples and the reference sampler's samples
from the same seeds.

Flow grids run from sigma = 1 to 0; their interior points lie between the finite log-SNR ends `lambda_range`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.optimize import minimize

from diffrl.algorithms.flow_matching import timestep_grid
from diffrl.algorithms.timestep_opt import lambdas_from_flow_grid, optimized_flow_grid, uniform_lambda_flow_grid
from diffrl.kinds.solver_tune.config import CandidateConfig, TuneConfig


def candidate_grid(candidate: CandidateConfig, nfe: int, tune: TuneConfig,
                   distance: Callable[[torch.Tensor], float] | None = None) -> tuple[torch.Tensor, dict]:
    """(grid, search record) of `candidate` at `nfe`; data_driven grids need `distance(grid)` and record the
    sampler runs spent and the distance of the start and of the grid found."""
    low, high = tune.lambda_range
    if candidate.grid == "uniform":
        return timestep_grid(nfe, candidate.shift), {}
    if candidate.grid == "uniform_lambda":
        return uniform_lambda_flow_grid(nfe, low, high), {}
    optimized = optimized_flow_grid(nfe, candidate.order, lambda_min=low, lambda_max=high)
    if candidate.grid == "optimized":
        return optimized, {}
    if distance is None:
        raise ValueError(f"candidate {candidate.name}: a data_driven grid needs the distance to the reference")
    start = optimized if tune.data_driven.start == "optimized" else uniform_lambda_flow_grid(nfe, low, high)
    return search_grid(start, low, high, distance, tune.data_driven.evaluations)


def interior_from_logits(logits: np.ndarray, low: float, high: float) -> torch.Tensor:
    """A flow grid whose interior log-SNRs split [low, high] in the proportions softmax(logits) (nfe logits give
    nfe - 1 interior points): monotone and inside the range for any logits, so the search is unconstrained."""
    weights = np.exp(logits - logits.max())
    cuts = np.cumsum(weights / weights.sum())[:-1]
    lambdas = low + (high - low) * cuts
    sigmas = 1.0 / (1.0 + np.exp(lambdas))  # flow: lambda = log((1 - s) / s)
    return torch.tensor([1.0, *sigmas, 0.0], dtype=torch.float32)


def logits_from_grid(grid: torch.Tensor, low: float, high: float) -> np.ndarray:
    """The logits whose `interior_from_logits` is `grid` (its interior clipped into [low, high])."""
    interior = np.clip(lambdas_from_flow_grid(grid)[1:-1], low, high)
    spans = np.diff(np.concatenate([[low], interior, [high]]))
    return np.log(np.maximum(spans, 1e-6))


def search_grid(start: torch.Tensor, low: float, high: float, distance: Callable[[torch.Tensor], float],
                evaluations: int) -> tuple[torch.Tensor, dict]:
    """Nelder-Mead over the interior points from `start`, at most `evaluations` distance calls; the best grid seen
    (never worse than `start`) and {search_runs, search_start_distance, search_distance}."""
    seen: dict[tuple[float, ...], float] = {}

    def objective(logits: np.ndarray) -> float:
        grid = interior_from_logits(logits, low, high)
        key = tuple(grid.tolist())
        if key not in seen:
            seen[key] = distance(grid)
        return seen[key]

    x0 = logits_from_grid(start, low, high)
    start_distance = objective(x0)
    if len(x0) > 1 and evaluations > 1:
        minimize(objective, x0, method="Nelder-Mead",
                 options={"maxfev": evaluations - 1, "initial_simplex": _simplex(x0, 0.3), "xatol": 1e-3,
                          "fatol": 0.0})
    best = min(seen, key=seen.get)
    record = {"search_runs": len(seen), "search_start_distance": start_distance, "search_distance": seen[best]}
    return torch.tensor(best, dtype=torch.float32), record


def _simplex(x0: np.ndarray, step: float) -> np.ndarray:
    return np.vstack([x0] + [x0 + step * np.eye(len(x0))[i] for i in range(len(x0))])
