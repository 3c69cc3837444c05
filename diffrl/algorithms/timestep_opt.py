"""Optimized time steps for multistep exponential-integrator samplers.

Xue et al., "Accelerating Diffusion Sampling with Optimized Time Steps" (CVPR 2024, arXiv 2402.17376; public code
scxue/DM-NonUniform, step_optim.py). A data-prediction multistep solver advances x / sigma by
int e^lambda D(lambda) dlambda over each interval, with D replaced by the Lagrange interpolant of the model's
clean-sample predictions D_j at earlier grid points. If each D_j is off by an amount proportional to
sigma_j^p / alpha_j (p = 2, the paper's choice for latent models; p = 1 for pixel models), the gap between the final
sample and the exact ODE solution is bounded, up to a constant, by sums of the weighted closed-form integrals
J_j = int e^lambda l_j(lambda) dlambda over each interval. The interior log-SNR points lambda_1 .. lambda_{N-1}
minimize that bound between fixed ends lambda_0 < lambda_N, under a linear monotonicity constraint, with scipy's
trust-constr, as in the repository. As there, the first steps' terms add as independent errors (root of the sum of
squares) and the later ones coherently, point by point, for stability at few steps. The interval orders follow
`sa_solver`'s predictor (warm-up, order 2 then 1 on the last steps), which are the repository's for order 3.
The bound knows nothing of the data: benchmarks/solver_gmm.py measures where its grids beat uniform ones.

Notation: x_t = alpha_t x0 + sigma_t eps, lambda = log(alpha / sigma), increasing from noise to data. "flow":
alpha = 1 - s, sigma = s (the project's rectified-flow models), so s = 1 / (1 + e^lambda); "vp": alpha^2 + sigma^2 = 1.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import LinearConstraint, minimize

from diffrl.algorithms.sa_solver import MAX_ORDER, exponential_moments
from diffrl.algorithms.solvers import check_grid

SCHEDULES = ("flow", "vp")
INITS = ("uniform_lambda", "uniform_t")
# Default finite ends, flow sigma 0.953 and 0.047: about the log-SNR range of Stable Diffusion's 1000-step schedule
# (-2.7 .. 3.5), the latent-space setting of the repository's sigma^2 / alpha weights. Wider ends (+-4.6, +-6.9) gave
# larger errors on the Gaussian-mixture check (benchmarks/solver_gmm.py).
DEFAULT_LAMBDA_MIN = -3.0
DEFAULT_LAMBDA_MAX = 3.0
MIN_GAP_FRACTION = 1e-2  # smallest allowed step, as a fraction of the uniform-lambda step
# trust-constr iterations: at 10 steps the objective stops falling after about 300; scipy's default 1000 doubles the
# time for the same point.
MAX_ITERATIONS = 500


def alpha_sigma(lambdas: np.ndarray, schedule: str = "flow") -> tuple[np.ndarray, np.ndarray]:
    """(alpha, sigma) at finite log-SNRs `lambdas` for the "flow" or "vp" schedule."""
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if schedule == "flow":
        return 1.0 / (1.0 + np.exp(-lambdas)), 1.0 / (1.0 + np.exp(lambdas))
    if schedule == "vp":
        return 1.0 / np.sqrt(1.0 + np.exp(-2 * lambdas)), 1.0 / np.sqrt(1.0 + np.exp(2 * lambdas))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def lagrange_exp_integrals(lambdas: list[float], nodes: list[int], start: int) -> list[float]:
    """J_j = int_{lambda_start}^{lambda_start+1} e^lambda l_j(lambda) dlambda for the Lagrange basis l_j through the
    grid points `nodes`, in closed form: with u = lambda - lambda_{start+1} each l_j is a polynomial in u, and
    `sa_solver.exponential_moments` integrates u^k e^u over [-h, 0]. Plain floats: the optimizer calls this thousands
    of times."""
    end = lambdas[start + 1]
    offsets = [lambdas[p] - end for p in nodes]
    moments = exponential_moments(1.0, end - lambdas[start], len(nodes))
    integrals = []
    for j, node in enumerate(offsets):
        coefficients, scale = [1.0], math.exp(end)  # l_j's coefficients, constant term first
        for m, other in enumerate(offsets):
            if m != j:
                coefficients = [a - other * b for a, b in zip([0.0] + coefficients, coefficients + [0.0])]
                scale /= node - other
        integrals.append(scale * sum(c * moment for c, moment in zip(coefficients, moments)))
    return integrals


def interval_nodes(nfe: int, order: int, exact_noise_end: bool = True) -> list[list[int]]:
    """Per interval i (grid point i to i + 1), the grid points the predictor interpolates, as in `sa_solver`: the
    min(order, i + 1, nfe - i) newest, ending at i. With `exact_noise_end` (a flow grid starting at sigma = 1,
    lambda = -inf, which the sampler leaves out of its interpolation) point 0 only enters the first interval."""
    nodes = []
    for i in range(nfe):
        points = range(i, i - min(order, i + 1, nfe - i), -1)
        nodes.append([p for p in points if p > 0 or i == 0] if exact_noise_end else list(points))
    return nodes


def step_error_bound(lambdas: np.ndarray, order: int, schedule: str = "flow", sigma_power: int = 2,
                     independent_steps: int | None = None) -> float:
    """DM-NonUniform's objective at the full grid `lambdas` (nfe + 1 increasing points): per interval the weighted
    integrals w_j J_j with w_j = sigma_j^p / alpha_j; intervals before `independent_steps` (default: 3 up to 7 steps,
    else 0, as in the repository) and single-point ones add their root sum of squares, the others add up per grid
    point, and the total is the sum of those and of the per-point absolute values."""
    lambdas = np.asarray(lambdas, dtype=np.float64)
    nfe = len(lambdas) - 1
    if independent_steps is None:
        independent_steps = 3 if nfe <= 7 else 0
    alpha, sigma = alpha_sigma(lambdas, schedule)
    weights = (sigma**sigma_power / alpha).tolist()
    points = lambdas.tolist()
    coherent = [0.0] * (nfe + 1)
    total = 0.0
    for i, nodes in enumerate(interval_nodes(nfe, order, exact_noise_end=schedule == "flow")):
        terms = [weights[p] * integral for p, integral in zip(nodes, lagrange_exp_integrals(points, nodes, i))]
        if len(nodes) == 1 or i < independent_steps:
            total += math.sqrt(sum(term * term for term in terms))
        else:
            for p, term in zip(nodes, terms):
                coherent[p] += term
    return total + sum(abs(c) for c in coherent)


def _check_ends(lambda_min: float, lambda_max: float, nfe: int, order: int | None = None) -> None:
    """ValueErrors naming the bad argument."""
    if not (math.isfinite(lambda_min) and math.isfinite(lambda_max)):
        raise ValueError(f"lambda_min and lambda_max must be finite, got {lambda_min} and {lambda_max}")
    if lambda_min >= lambda_max:
        raise ValueError(f"lambda_min must be below lambda_max, got {lambda_min} >= {lambda_max}")
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    if order is not None and not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be 1..{MAX_ORDER}, got {order}")
    if order is not None and nfe < order:
        raise ValueError(f"nfe must be >= order, got nfe={nfe} < order={order}")


def initial_lambdas(lambda_min: float, lambda_max: float, nfe: int, init: str = "uniform_lambda") -> np.ndarray:
    """nfe + 1 log-SNRs from lambda_min to lambda_max, uniform in lambda or, for "uniform_t", in the flow sigma
    (the repository's "unif" and "unif_t" initializations)."""
    _check_ends(lambda_min, lambda_max, nfe)
    if init == "uniform_lambda":
        return np.linspace(lambda_min, lambda_max, nfe + 1)
    if init != "uniform_t":
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    s = np.linspace(*alpha_sigma(np.array([lambda_min, lambda_max]), "flow")[1], nfe + 1)
    return np.log1p(-s) - np.log(s)


def optimize_lambdas(lambda_min: float, lambda_max: float, nfe: int, order: int, schedule: str = "flow",
                     sigma_power: int = 2, independent_steps: int | None = None,
                     init: str = "uniform_lambda") -> np.ndarray:
    """nfe + 1 increasing log-SNRs from lambda_min to lambda_max (kept fixed) whose interior points minimize
    `step_error_bound` for a multistep data-prediction solver of `order`, by scipy minimize(method="trust-constr")
    under the linear constraint lambda_{i+1} - lambda_i >= a small gap (DM-NonUniform, step_optim.get_ts_lambdas)."""
    _check_ends(lambda_min, lambda_max, nfe, order)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    start = initial_lambdas(lambda_min, lambda_max, nfe, init)
    if nfe == 1:
        return start

    def full(interior: np.ndarray) -> np.ndarray:
        return np.concatenate(([lambda_min], interior, [lambda_max]))

    def objective(interior: np.ndarray) -> float:
        return step_error_bound(full(interior), order, schedule, sigma_power, independent_steps)

    # Row i is lambda_{i+1} - lambda_i in the interior unknowns; the ends move to the bounds.
    differences = np.eye(nfe, nfe - 1) - np.eye(nfe, nfe - 1, k=-1)
    gap = MIN_GAP_FRACTION * (lambda_max - lambda_min) / nfe
    lower = np.full(nfe, gap)
    lower[0] += lambda_min
    lower[-1] -= lambda_max
    constraint = LinearConstraint(differences, lower, np.inf)
    with warnings.catch_warnings():  # BFGS on a piecewise-smooth objective: some updates see no gradient change
        warnings.filterwarnings("ignore", message="delta_grad == 0.0", category=UserWarning)
        result = minimize(objective, start[1:-1], method="trust-constr", constraints=[constraint],
                          options={"maxiter": MAX_ITERATIONS})
    lambdas = full(np.sort(result.x))
    if not np.all(np.diff(lambdas) > 0):
        raise RuntimeError(f"trust-constr returned non-increasing log-SNRs {lambdas.tolist()}: {result.message}")
    return lambdas


def flow_grid_from_lambdas(lambdas: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The flow sigma grid (float32, 1 -> 0) with interior points s = 1 / (1 + e^lambda); the ends are exactly 1
    and 0 whatever lambdas[0] and lambdas[-1] are (the sampler takes them as the exact limits)."""
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if lambdas.ndim != 1 or len(lambdas) < 2:
        raise ValueError(f"lambdas must be one-dimensional with at least 2 points, got shape {lambdas.shape}")
    interior = alpha_sigma(lambdas[1:-1], "flow")[1]
    return check_grid(np.concatenate(([1.0], interior, [0.0])))


def lambdas_from_flow_grid(grid: torch.Tensor | np.ndarray) -> np.ndarray:
    """lambda = log((1 - s) / s) at each point of a flow sigma grid (float64; -inf at s = 1, +inf at s = 0)."""
    s = check_grid(grid).double().numpy()
    with np.errstate(divide="ignore"):
        return np.log1p(-s) - np.log(s)


def uniform_lambda_flow_grid(nfe: int, lambda_min: float = DEFAULT_LAMBDA_MIN,
                             lambda_max: float = DEFAULT_LAMBDA_MAX) -> torch.Tensor:
    """Flow grid whose interior points are uniform in lambda between lambda_min and lambda_max."""
    return flow_grid_from_lambdas(initial_lambdas(lambda_min, lambda_max, nfe))


def optimized_flow_grid(nfe: int, order: int, lambda_min: float = DEFAULT_LAMBDA_MIN,
                        lambda_max: float = DEFAULT_LAMBDA_MAX, **options) -> torch.Tensor:
    """Flow grid from `optimize_lambdas` (schedule "flow"; `options` go to it)."""
    return flow_grid_from_lambdas(optimize_lambdas(lambda_min, lambda_max, nfe, order, schedule="flow", **options))
