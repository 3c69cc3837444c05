"""SA-Solver: its order-1 steps are DDIM and the DDPM posterior, it agrees step by step with diffusers'
SASolverScheduler, it converges at its order on an exact Gaussian flow, and it samples the tiny model through the
Solver protocol on exactly the grid it is given."""

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from diffusers import SASolverScheduler  # noqa: E402

from diffrl.algorithms.sa_solver import SAStepper, sa_solver_sample  # noqa: E402
from diffrl.algorithms.solvers import build_solver  # noqa: E402
from diffrl.workers.sampling import sample  # noqa: E402

WEIGHTS = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
FLOW_GRID = torch.linspace(0.98, 0.02, 9) ** 1.3  # uneven, strictly decreasing, both lambdas finite


def flow_velocity(x, sigma):
    """Some smooth nonlinear stand-in for a flow model's velocity."""
    return torch.tanh(x @ WEIGHTS) * (0.5 + sigma) + 0.3 * x


def vp_epsilon(x, karras_sigma):
    """The exact epsilon of data N(0, 0.25) plus a small nonlinear term, at diffusers' sigma (= sigma / alpha)."""
    alpha = 1 / (karras_sigma**2 + 1) ** 0.5
    sigma = karras_sigma * alpha
    return sigma * x / (alpha * alpha * 0.25 + sigma * sigma) + 0.05 * torch.tanh(x @ WEIGHTS)


def diffusers_scheduler(kind, predictor, corrector, tau):
    if kind == "flow":
        scheduler = SASolverScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, predictor_order=predictor,
                                      corrector_order=corrector, tau_func=lambda t: tau)
        scheduler.set_timesteps(len(FLOW_GRID) - 1)
        scheduler.sigmas, scheduler.timesteps = FLOW_GRID.clone(), FLOW_GRID[:-1] * 1000  # the same sigma grid
        alphas, sigmas = (1 - FLOW_GRID.double()).tolist(), FLOW_GRID.double().tolist()
    else:
        scheduler = SASolverScheduler(prediction_type="epsilon", predictor_order=predictor, corrector_order=corrector,
                                      tau_func=lambda t: tau)
        scheduler.set_timesteps(8)
        karras = scheduler.sigmas.double()
        alpha = 1 / (karras**2 + 1).sqrt()
        alphas, sigmas = alpha.tolist(), (karras * alpha).tolist()
    scheduler.set_begin_index(0)
    return scheduler, alphas, sigmas


@pytest.mark.parametrize("kind", ["flow", "vp"])
@pytest.mark.parametrize("predictor,corrector", [(1, 1), (2, 2), (3, 3), (2, 1), (3, 2), (1, 3)])
@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_agrees_step_by_step_with_diffusers_sasolver(kind, predictor, corrector, tau):
    scheduler, alphas, sigmas = diffusers_scheduler(kind, predictor, corrector, tau)
    model = flow_velocity if kind == "flow" else vp_epsilon
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    stepper = SAStepper(alphas, sigmas, tau, predictor, corrector)
    ours = theirs = start
    for index in range(stepper.num_steps):
        karras_or_flow_sigma = float(scheduler.sigmas[index])
        noise = torch.randn(start.shape, generator=torch.Generator().set_state(generator.get_state()))
        theirs = scheduler.step(model(theirs, karras_or_flow_sigma), scheduler.timesteps[index], theirs,
                                generator=generator).prev_sample
        output = model(ours, karras_or_flow_sigma)
        if kind == "flow":
            prediction = ours - sigmas[index] * output
        else:
            prediction = (ours - sigmas[index] * output) / alphas[index]
        ours = stepper.step(index, ours, prediction, noise)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=f"step {index}")


SCHEDULES = {  # (alpha, sigma) at a noisier point s and a cleaner point t
    "flow": ((0.3, 0.7), (0.55, 0.45)),
    "vp": ((0.6, 0.8), (math.sqrt(0.91), 0.3)),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_order_one_is_ddim_without_noise_and_the_ddpm_posterior_with_tau_one(schedule):
    (alpha_s, sigma_s), (alpha_t, sigma_t) = SCHEDULES[schedule]
    x_s, x0, noise = torch.randn(3, 5, generator=torch.Generator().manual_seed(4)).unbind()
    ddim = alpha_t * x0 + sigma_t * (x_s - alpha_s * x0) / sigma_s  # DDIM / DPM-Solver++(1)
    # DDPM posterior q(x_t | x_s, x0): alpha_ts = alpha_s / alpha_t, sigma_ts^2 = sigma_s^2 - alpha_ts^2 sigma_t^2.
    alpha_ts = alpha_s / alpha_t
    var_ts = sigma_s**2 - alpha_ts**2 * sigma_t**2
    mean = alpha_ts * sigma_t**2 / sigma_s**2 * x_s + alpha_t * var_ts / sigma_s**2 * x0
    ddpm = mean + math.sqrt(var_ts * sigma_t**2 / sigma_s**2) * noise
    for tau, expected in ((0.0, ddim), (1.0, ddpm)):
        stepper = SAStepper([alpha_s, alpha_t], [sigma_s, sigma_t], tau, predictor_order=1, corrector_order=1)
        torch.testing.assert_close(stepper.step(0, x_s, x0, noise), expected, rtol=1e-6, atol=1e-6)


def gaussian_prediction(x, sigma, scale=0.5):
    """The exact clean-sample prediction for data N(0, scale^2) under x_t = (1 - s) x0 + s eps."""
    alpha = 1 - sigma
    return alpha * scale**2 * x / (alpha**2 * scale**2 + sigma**2)


def gaussian_flow_map(x, sigma_from, sigma_to, scale=0.5):
    """The exact probability-flow ODE map for that data: it rescales x's std sqrt(alpha^2 scale^2 + sigma^2)."""
    def std(sigma):
        return math.sqrt((1 - sigma) ** 2 * scale**2 + sigma**2)
    return x * std(sigma_to) / std(sigma_from)


@pytest.mark.parametrize("predictor,corrector", [(1, 0), (2, 0), (3, 0), (2, 2), (3, 3), (4, 4)])
def test_ode_converges_at_least_at_its_predictor_order_on_an_exact_gaussian_flow(predictor, corrector):
    noise = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    errors = []
    for steps in (16, 64):
        sigmas = (1 / (1 + torch.linspace(-6.0, 6.0, steps + 1, dtype=torch.float64).exp())).tolist()
        out = sa_solver_sample(lambda x, i: gaussian_prediction(x, sigmas[i]), noise, [1 - s for s in sigmas],
                               sigmas, predictor_order=predictor, corrector_order=corrector)
        errors.append(float((out - gaussian_flow_map(noise, sigmas[0], sigmas[-1])).abs().max()))
    # Four times the steps: an order-p method's error shrinks about 4^p times; ask for half of that.
    assert errors[0] / errors[1] > 4**predictor / 2, errors


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_grid_ends_at_sigma_one_and_zero_are_exact_limits(tau):
    noise = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    noises = list(torch.randn(6, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))
    interior = [0.9, 0.7, 0.45, 0.25, 0.1]

    def run(ends, predictor, corrector):
        sigmas = [ends[0]] + interior + [ends[1]]
        return sa_solver_sample(lambda x, i: gaussian_prediction(x, sigmas[i]), noise, [1 - s for s in sigmas],
                                sigmas, noises, predictor, corrector, tau)

    # Order 1 interpolates one point: the infinite-lambda ends are continuous limits of nearby finite ends.
    torch.testing.assert_close(run((1.0, 0.0), 1, 1), run((1 - 1e-12, 1e-12), 1, 1), rtol=0, atol=1e-9)
    # Higher orders leave the lambda = -inf point out: the first step is the closed-form DDIM / posterior step
    # from pure noise, and the last step returns the model's last clean-sample prediction.
    stepper = SAStepper([0.0, 0.1] + [1 - s for s in interior[1:]] + [1.0], [1.0] + interior + [0.0], tau, 3, 3)
    first = stepper.step(0, noise, gaussian_prediction(noise, 1.0), noises[0])
    expected = 0.1 * gaussian_prediction(noise, 1.0) + 0.9 * (noises[0] if tau else noise)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-12)
    x = first
    for index in range(1, 6):
        prediction = gaussian_prediction(x, stepper.sigmas[index])
        x = stepper.step(index, x, prediction, noises[index])
    torch.testing.assert_close(x, prediction, rtol=0, atol=0)


def test_stepper_refuses_steps_out_of_order_missing_noise_and_bad_orders():
    stepper = SAStepper([0.2, 0.6, 1.0], [0.8, 0.4, 0.0], taus=[1.0, 0.0])
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="tau=1.0: it needs its noise"):
        stepper.step(0, x, x)
    with pytest.raises(ValueError, match="out of order"):
        stepper.step(1, x, x)
    with pytest.raises(ValueError, match="predictor_order must be 1..4"):
        SAStepper([0.2, 1.0], [0.8, 0.0], predictor_order=5)
    with pytest.raises(ValueError, match="log-SNR must increase"):
        SAStepper([0.6, 0.2], [0.4, 0.8])
    with pytest.raises(ValueError, match="tau_window"):
        build_solver("sa_solver", tau_window=(0.9, 0.1))


class TinyFlow:
    sample_shape = (2, 3, 3)

    def __init__(self):
        self.denoiser = torch.nn.Linear(1, 1)
        self.sigmas_seen = []

    def initial_noise(self, seeds):
        return torch.stack([torch.randn(self.sample_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def velocity(self, x, t, cond, guidance_scale=1.0, null_cond=None):
        self.sigmas_seen.append(float(t[0]))
        return flow_velocity(x.flatten(1)[:, :4], float(t[0])).repeat(1, 5)[:, :18].view_as(x) - x


def test_sampling_with_sa_solver_visits_the_grid_once_per_step_and_a_sample_depends_on_its_seed_alone():
    grid = (1.0, 0.9, 0.75, 0.5, 0.3, 0.12, 0.0)
    options = {"predictor_order": 3, "corrector_order": 2, "tau": 1.0, "tau_window": (0.2, 0.8)}
    model = TinyFlow()
    both = sample(model, None, [7, 8], sampler="sa_solver", grid=grid, solver_options=options)
    assert model.sigmas_seen == pytest.approx(list(grid[:-1]))  # one model call per step
    alone = sample(TinyFlow(), None, [8], sampler="sa_solver", grid=grid, solver_options=options)
    torch.testing.assert_close(both.samples[1:], alone.samples, rtol=0, atol=1e-6)
    without_noise = sample(TinyFlow(), None, [7, 8], sampler="sa_solver", grid=grid,
                           solver_options={**options, "tau": 0.0})
    solver = build_solver("sa_solver", **options)
    solver.set_timesteps(grid)
    assert solver.stochastic == (False, False, True, True, True, False)  # sigma in [0.2, 0.8]
    assert not torch.allclose(both.samples, without_noise.samples)  # the window's steps drew noise
    with pytest.raises(ValueError, match="no sde_window"):
        sample(TinyFlow(), None, [7], sampler="sa_solver", grid=grid, solver_options=options, sde_window=2)
