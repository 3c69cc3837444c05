"""Optimized time steps (Xue et al., arXiv 2402.17376, scxue/DM-NonUniform): the optimizer keeps its ends, stays
monotone and lowers its bound; flow grids and log-SNRs convert both ways; the Gaussian mixture's denoiser and ODE
solution are exact; on the mixture the optimized grid beats uniform lambda and uniform t."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from diffrl.algorithms.solvers import check_grid
from diffrl.algorithms.timestep_opt import (
    DEFAULT_LAMBDA_MAX,
    DEFAULT_LAMBDA_MIN,
    flow_grid_from_lambdas,
    initial_lambdas,
    lagrange_exp_integrals,
    lambdas_from_flow_grid,
    optimize_lambdas,
    optimized_flow_grid,
    step_error_bound,
    uniform_lambda_flow_grid,
)
from diffrl.envs.gaussian_mixture import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from solver_gmm import gmm_schedule_errors  # noqa: E402

NFES = (5, 6, 8, 10)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared machine extra intra-op threads only contend (10x slower ODE solves)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("nfe, order, schedule", [(5, 3, "flow"), (6, 2, "flow"), (4, 1, "flow"), (5, 3, "vp")])
def test_optimizer_keeps_the_ends_stays_monotone_and_lowers_its_bound(nfe, order, schedule):
    lambdas = optimize_lambdas(-3.0, 2.5, nfe, order, schedule=schedule)
    assert lambdas.shape == (nfe + 1,)
    assert lambdas[0] == -3.0 and lambdas[-1] == 2.5
    assert np.all(np.diff(lambdas) > 0)
    uniform = np.linspace(-3.0, 2.5, nfe + 1)
    assert step_error_bound(lambdas, order, schedule) < step_error_bound(uniform, order, schedule)


@pytest.mark.parametrize("call, names", [
    (lambda: optimize_lambdas(-3, 3, 2, 3), "nfe"),
    (lambda: optimize_lambdas(-3, 3, 5, 0), "order"),
    (lambda: optimize_lambdas(-math.inf, 3, 5, 2), "lambda_min and lambda_max"),
    (lambda: optimize_lambdas(-3, math.nan, 5, 2), "lambda_min and lambda_max"),
    (lambda: optimize_lambdas(3, 3, 5, 2), "lambda_min"),
    (lambda: optimize_lambdas(-3, 3, 5, 2, schedule="ve"), "schedule"),
    (lambda: optimize_lambdas(-3, 3, 5, 2, init="edm"), "init"),
    (lambda: uniform_lambda_flow_grid(0), "nfe"),
    (lambda: flow_grid_from_lambdas([0.0]), "lambdas"),
    (lambda: flow_grid_from_lambdas([-3.0, 1.0, 1.0 + 1e-9, 3.0]), "strictly decreasing"),
])
def test_bad_arguments_are_named(call, names):
    with pytest.raises(ValueError, match=names):
        call()


def test_closed_form_integrals_match_quadrature():
    lambdas = [-1.3, -0.4, 0.2, 1.5]
    for nodes, start in (([0], 0), ([1, 0], 1), ([2, 1, 0], 2), ([3, 2, 1, 0], 2)):
        for j, integral in zip(nodes, lagrange_exp_integrals(lambdas, nodes, start)):
            others = [lambdas[m] for m in nodes if m != j]
            basis = lambda lam: math.prod((lam - o) / (lambdas[j] - o) for o in others)  # noqa: E731
            expected, _ = quad(lambda lam: math.exp(lam) * basis(lam), lambdas[start], lambdas[start + 1])
            assert integral == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_flow_grids_and_lambdas_convert_both_ways():
    lambdas = np.array([-3.0, -1.2, 0.3, 2.0, 3.0])
    grid = flow_grid_from_lambdas(lambdas)
    assert grid.dtype == torch.float32 and grid[0] == 1 and grid[-1] == 0
    assert torch.equal(check_grid(grid), grid)
    back = lambdas_from_flow_grid(grid)
    assert back[0] == -math.inf and back[-1] == math.inf
    np.testing.assert_allclose(back[1:-1], lambdas[1:-1], atol=1e-5)
    assert torch.equal(flow_grid_from_lambdas(back), grid)
    uniform = uniform_lambda_flow_grid(4, -2.0, 2.0)
    np.testing.assert_allclose(uniform[1:-1].numpy(), 1 / (1 + np.exp([-1.0, 0.0, 1.0])), rtol=1e-6)
    # the repository's uniform-t initialization spaces the flow sigma evenly between the ends
    s = 1 / (1 + np.exp(initial_lambdas(-2.0, 2.0, 4, init="uniform_t")))
    np.testing.assert_allclose(np.diff(s), np.diff(s)[0])
    optimized = optimized_flow_grid(5, 2)
    assert torch.equal(check_grid(optimized), optimized)
    assert DEFAULT_LAMBDA_MIN < lambdas_from_flow_grid(optimized)[1] < lambdas_from_flow_grid(optimized)[-2] \
        < DEFAULT_LAMBDA_MAX


@pytest.mark.parametrize("alpha, sigma", [(0.6, 0.4), (0.3, 0.8), (0.8, 0.6)])
def test_denoiser_is_the_posterior_mean(alpha, sigma):
    # Self-normalized importance sampling from the prior: E[x0 | x_t] = E[x0 p(x_t | x0)] / E[p(x_t | x0)].
    generator = torch.Generator().manual_seed(3)
    mixture = GaussianMixture.random(3, 2, generator)
    x_t = alpha * mixture.sample(4, generator) + sigma * torch.randn(4, 2, generator=generator, dtype=torch.float64)
    prior = mixture.sample(100_000, generator)
    log_likelihood = -0.5 * ((x_t[:, None] - alpha * prior[None]) ** 2).sum(-1) / sigma**2
    estimate = torch.softmax(log_likelihood, dim=-1) @ prior
    np.testing.assert_allclose(mixture.denoise(x_t, alpha, sigma).numpy(), estimate.numpy(), atol=0.02, rtol=0)
    per_sample = mixture.denoise(x_t, torch.full((4,), alpha, dtype=torch.float64),
                                 torch.full((4,), sigma, dtype=torch.float64))
    np.testing.assert_allclose(per_sample.numpy(), mixture.denoise(x_t, alpha, sigma).numpy(), rtol=1e-12)


def test_flow_ode_solution_is_exact_for_one_gaussian():
    # For N(mu, diag(v)) the flow x_s = (1 - s) mu + sqrt((1 - s)^2 v + s^2) eps maps noise eps to mu + sqrt(v) eps.
    generator = torch.Generator().manual_seed(4)
    gaussian = GaussianMixture.random(1, 3, generator)
    noise = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    exact = gaussian.means + gaussian.variances.sqrt() * noise
    np.testing.assert_allclose(gaussian.flow_ode_solution(noise).numpy(), exact.numpy(), atol=1e-8, rtol=0)


@pytest.fixture(scope="module")
def mixture_errors() -> dict[tuple[int, int, int], dict]:
    rows = gmm_schedule_errors(NFES, solver_orders=((3, 3), (3, 0)))
    return {(row["predictor_order"], row["corrector_order"], row["nfe"]): row for row in rows}


@pytest.mark.parametrize("nfe", NFES)
def test_optimized_schedule_beats_uniform_ones_on_the_mixture(mixture_errors, nfe):
    # SA-Solver order 3 predictor and corrector (tau = 0), the UniPC-style pairing the paper evaluates.
    row = mixture_errors[3, 3, nfe]
    assert row["optimized"] < row["uniform_lambda"] and row["optimized"] < row["uniform_t"], row


@pytest.mark.xfail(strict=True, reason="measured: without a corrector the order-3 predictor on the optimized grid "
                   "loses to uniform t at NFE 5 and 6 and to uniform lambda at 10 (benchmarks/solver_gmm.py); the "
                   "data-agnostic bound ranks the grids differently from that sampler's error")
def test_optimized_schedule_beats_uniform_ones_without_a_corrector(mixture_errors):
    rows = [mixture_errors[3, 0, nfe] for nfe in NFES]
    assert all(row["optimized"] < min(row["uniform_lambda"], row["uniform_t"]) for row in rows), rows
