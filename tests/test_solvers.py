"""Solvers: exact on known flows, visit exactly the grid they are given, end with a deterministic step, carry and
reset their state; a request's time grid reaches the rollout batch."""

import math

import pytest
import torch

from diffrl.algorithms.flow_matching import timestep_grid
from diffrl.algorithms.solvers import CPSSolver, EulerODESolver, FlowSDESolver, build_solver, check_grid
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.workers.batch import RolloutBatch, SampleRequest
from diffrl.workers.rollout import RolloutWorker
from diffrl.workers.sampling import sample

UNEVEN = (1.0, 0.93, 0.7, 0.41, 0.2, 0.05, 0.0)


class PointMass:
    """A stand-in model whose data is the single point x0: the exact velocity of x_t = (1 - t) x0 + t eps is
    v(x, t) = (x - x0) / t. Records every (x, t) it is called with."""

    sample_shape = (2, 3, 3)

    def __init__(self) -> None:
        self.denoiser = torch.nn.Linear(1, 1)
        self.x0 = torch.linspace(-1, 1, 18).view(self.sample_shape)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def initial_noise(self, seeds):
        return torch.stack([torch.randn(self.sample_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def velocity(self, x, t, cond, guidance_scale=1.0, null_cond=None):
        self.calls.append((x.clone(), t.clone()))
        return (x - self.x0) / t.view(-1, 1, 1, 1)


def test_euler_on_a_linear_flow_matches_its_closed_form_and_converges_to_the_ode_solution():
    # v = k x: Euler multiplies x by (1 + k dt) each step; the ODE solution from t = 1 to 0 is x exp(-k).
    k, x1 = 0.8, torch.tensor([[1.5, -2.0]])
    for grid, tolerance in ((torch.tensor(UNEVEN), None), (timestep_grid(2000), 1e-3)):
        solver = EulerODESolver()
        solver.set_timesteps(grid)
        x = x1
        for index in range(solver.num_steps):
            x = solver.step(k * x, index, x).prev_sample
        expected = math.prod(1 + k * (float(b) - float(a)) for a, b in zip(grid[:-1], grid[1:]))
        torch.testing.assert_close(x, x1 * expected, rtol=1e-5, atol=0)
        if tolerance:
            torch.testing.assert_close(x, x1 * math.exp(-k), rtol=tolerance, atol=0)


@pytest.mark.parametrize("sampler", ["ode", "sde", "cps"])
def test_sampling_visits_exactly_the_given_uneven_grid(sampler):
    model = PointMass()
    result = sample(model, None, [3, 4], sampler=sampler, noise_level=0.7, grid=UNEVEN,
                    store_trajectory=sampler != "ode")
    expected = torch.tensor(UNEVEN, dtype=torch.float32)
    assert torch.equal(result.grid, expected)
    visited = torch.stack([t for _, t in model.calls])  # [steps, batch]
    assert torch.equal(visited, expected[:-1, None].expand(-1, 2))
    if sampler != "ode":
        assert result.step_index.tolist() == [list(range(len(UNEVEN) - 2))] * 2  # all steps but the last


@pytest.mark.parametrize("sampler", ["ode", "sde", "cps"])
def test_the_last_step_is_deterministic_so_samples_of_a_point_mass_end_on_it(sampler):
    # The exact velocity's Euler step to sigma = 0 lands on x0 from anywhere; a noisy last step would not.
    model = PointMass()
    result = sample(model, None, [11, 12, 13], sampler=sampler, noise_level=1.0, grid=UNEVEN)
    torch.testing.assert_close(result.samples, model.x0.expand(3, -1, -1, -1), rtol=0, atol=1e-5)
    if sampler != "ode":  # ... although the earlier steps did draw noise: the trajectory left the straight line
        x_mid = model.calls[3][0]
        line = model.x0 + float(UNEVEN[3]) * (model.calls[0][0] - model.x0)
        assert (x_mid - line).abs().max() > 1e-2
    solver = build_solver(sampler, **({} if sampler == "ode" else {"noise_level": 0.5}))
    solver.set_timesteps(UNEVEN)
    assert solver.stochastic[-1] is False
    assert all(solver.stochastic[:-1]) == (sampler != "ode")


def test_a_stochastic_step_scores_its_own_draw_with_the_same_log_prob():
    # Flow-GRPO recomputes each stored step's log-prob from (x, v, x_next); the draw and the rescoring must agree.
    x, v, noise = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    for solver in (FlowSDESolver(0.7), CPSSolver(0.7)):
        solver.set_timesteps(UNEVEN)
        solver.step(v, 0, x)
        drawn = solver.step(v, 1, x, noise=noise)
        rescored = solver.step(v, 1, x, prev_sample=drawn.prev_sample)
        assert torch.equal(rescored.log_prob, drawn.log_prob) and torch.equal(rescored.mean, drawn.mean)
        assert drawn.log_prob.shape == (4,) and drawn.std is not None
        assert solver.step(v, 2, x).log_prob is None  # without noise: the deterministic step, no density


def test_solvers_carry_state_in_order_and_set_timesteps_resets_it():
    class TwoStep(EulerODESolver):
        order = 2

    solver = TwoStep()
    solver.set_timesteps(UNEVEN)
    outputs = [torch.full((1, 2), float(i)) for i in range(3)]
    x = torch.zeros(1, 2)
    for index, v in enumerate(outputs):
        x = solver.step(v, index, x).prev_sample
    assert [o[0, 0].item() for o in solver.model_outputs] == [1.0, 2.0]  # the last `order`, oldest first
    assert solver.step_index == 3
    with pytest.raises(ValueError, match="step index 5 out of order; expected 3"):
        solver.step(outputs[0], 5, x)
    solver.set_timesteps((1.0, 0.5, 0.0))
    assert solver.model_outputs == [] and solver.step_index == 0 and solver.num_steps == 2
    solver.step(outputs[0], 0, x)
    solver.reset()
    assert solver.model_outputs == [] and solver.step_index == 0
    with pytest.raises(ValueError, match="deterministic: pass neither noise"):
        solver.step(outputs[0], 0, x, noise=torch.randn(1, 2))
    with pytest.raises(RuntimeError, match="call set_timesteps"):
        EulerODESolver().step(outputs[0], 0, x)


@pytest.mark.parametrize(
    "grid, problem",
    [
        ((1.0,), "at least 2 points"),
        ((), "at least 2 points"),
        (((1.0, 0.0), (1.0, 0.0)), "one dimension"),
        ((0.9, 0.5, 0.0), "runs from 1 \\(noise\\) to 0"),
        ((1.0, 0.5, 0.1), "runs from 1 \\(noise\\) to 0"),
        ((1.0, 0.3, 0.6, 0.0), "strictly decreasing, got grid\\[1\\]=0.3.* then grid\\[2\\]=0.6"),
        ((1.0, 0.5, 0.5, 0.0), "strictly decreasing"),
        ((1.0, float("nan"), 0.0), "finite"),
    ],
)
def test_a_bad_grid_is_refused_naming_the_problem(grid, problem):
    with pytest.raises(ValueError, match=problem):
        check_grid(grid)
    with pytest.raises(ValueError, match=problem):
        FlowSDESolver(0.7).set_timesteps(grid)


def test_build_solver_names_the_allowed_solvers_and_options():
    assert isinstance(build_solver("cps", noise_level=0.3), CPSSolver)
    with pytest.raises(ValueError, match="unknown solver 'ddim'; allowed: ode, sde, cps"):
        build_solver("ddim")
    with pytest.raises(ValueError, match="solver 'ode' takes options none, got \\['noise_level'\\]"):
        build_solver("ode", noise_level=0.7)
    with pytest.raises(ValueError, match="noise_level must be in \\[0, 1\\]"):
        build_solver("sde", noise_level=1.5)


def _worker(**rollout) -> RolloutWorker:
    cfg = RLJobConfig(model={"path": None}, rollout={"batch_size": 2, "num_steps": 4, **rollout},
                      learner={"awm": {"num_timesteps": 1}})
    worker = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump(),
                           store_trajectory=cfg.rollout.sampler != "ode")
    worker.setup()
    return worker


def _requests(grid=None, n=3):
    return [SampleRequest("a photo of a red circle", {}, 0, 40 + i, grid=grid) for i in range(n)]


def test_a_request_grid_reaches_the_rollout_batch_exactly():
    worker = _worker(sampler="sde")
    batch = worker.generate(_requests(UNEVEN))
    assert torch.equal(batch.grid, torch.tensor(UNEVEN, dtype=torch.float32))
    assert batch.step_index.shape == (3, len(UNEVEN) - 2)  # every stochastic step of the uneven grid is stored
    # The default grid written out is the default grid; num_steps= still picks the even grid of that many steps.
    default = worker.generate(_requests())
    spelled = worker.generate(_requests(tuple(timestep_grid(4).tolist())))
    assert torch.equal(spelled.samples, default.samples) and torch.equal(spelled.log_probs, default.log_probs)
    assert torch.equal(worker.generate(_requests(), num_steps=3, sampler="ode").grid, timestep_grid(3))
    assert not torch.allclose(batch.samples, default.samples)


def test_one_generate_call_samples_on_one_grid():
    worker = _worker()
    with pytest.raises(ValueError, match="one generate call samples on one time grid .* carry 2"):
        worker.generate(_requests(UNEVEN, 2) + _requests(None, 2))
    with pytest.raises(ValueError, match="SampleRequest.grid: a time grid must be strictly decreasing"):
        worker.generate(_requests((1.0, 0.2, 0.4, 0.0)))
    with pytest.raises(ValueError, match="different time grids"):
        RolloutBatch.concat([worker.generate(_requests(UNEVEN, 1)), worker.generate(_requests(None, 1))])
