"""Solvers: one protocol for stepping a flow model from sigma = 1 to sigma = 0 on a time grid.

The protocol is diffusers' scheduler protocol (huggingface/diffusers SchedulerMixin, e.g.
FlowMatchEulerDiscreteScheduler): `set_timesteps(grid)` once per trajectory, then `step(model_output, index, sample)`
once per grid step, in order, with whatever the solver must remember between steps (a multistep solver's past model
outputs) kept on the solver object. Unlike diffusers the noise comes in as an argument, so that a sample stays a
function of its seed. The step math itself lives in `flow_matching` (Flow-GRPO's SDE, arXiv 2505.05470; CPS,
arXiv 2509.05952); a solver only picks which step to take.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from diffrl.algorithms.flow_matching import StepOutput, cps_step, ode_step, sde_step
from diffrl.algorithms.sa_solver import SAStepper, check_orders


@dataclass
class SolverStep:
    """One solver step. prev_sample: x at the next grid point. For a stochastic step (noise or prev_sample given)
    also the Gaussian transition's mean, the std Flow-GRPO calls std_dev_t (see `flow_matching.StepOutput`) and the
    [B] log_prob of prev_sample, which is what Flow-GRPO stores per step; None for a deterministic step."""

    prev_sample: Tensor
    mean: Tensor | None = None
    std: Tensor | None = None
    log_prob: Tensor | None = None


def check_grid(grid: Tensor | Sequence[float]) -> Tensor:
    """The grid as a float32 CPU tensor, or a ValueError naming what is wrong with it.

    A grid is the sigmas a trajectory visits: at least 2 points, grid[0] = 1 (pure noise, where sampling starts),
    strictly decreasing (every step moves towards the data), grid[-1] = 0 (the clean sample).
    """
    values = torch.as_tensor(grid, dtype=torch.float32).detach().cpu().clone()
    if values.ndim != 1 or values.numel() < 2:
        raise ValueError(f"a time grid needs at least 2 points in one dimension, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"a time grid must be finite, got {values.tolist()}")
    if values[0] != 1 or values[-1] != 0:
        raise ValueError(f"a time grid runs from 1 (noise) to 0 (data), got {values[0].item()} ... {values[-1].item()}")
    rising = (values[1:] >= values[:-1]).nonzero()
    if rising.numel():
        i = int(rising[0])
        raise ValueError(f"a time grid must be strictly decreasing, got grid[{i}]={values[i].item()} then "
                         f"grid[{i + 1}]={values[i + 1].item()}")
    return values


class Solver:
    """Base of every solver: the grid, the step counter and the recent model outputs.

    Steps run in order 0, 1, ..., num_steps - 1 after `set_timesteps`; the same index may be stepped again with the
    same model output (an integrator takes the deterministic and the stochastic step of one model call, keeping
    some rows noise-free). `model_outputs` holds the last `order` model outputs, oldest first, for multistep
    solvers; `set_timesteps` and `reset` clear it.
    """

    order = 1
    # Whether a step depends only on its own input (then `sample` may take the deterministic and the stochastic
    # step of one model call and mix them per row); a multistep solver takes every step exactly once.
    memoryless = True

    def __init__(self) -> None:
        self.sigmas: Tensor | None = None
        self.model_outputs: list[Tensor] = []
        self.step_index = 0  # the next index to step

    def set_timesteps(self, grid: Tensor | Sequence[float]) -> None:
        """Start a trajectory on `grid` (see `check_grid`), forgetting any earlier one."""
        self.sigmas = check_grid(grid)
        self.reset()

    def reset(self) -> None:
        self.model_outputs = []
        self.step_index = 0

    @property
    def num_steps(self) -> int:
        if self.sigmas is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(grid) before stepping")
        return self.sigmas.numel() - 1

    @property
    def stochastic(self) -> tuple[bool, ...]:
        """Per step index, whether that step draws noise."""
        return (False,) * self.num_steps

    def step(
        self,
        model_output: Tensor,
        index: int,
        sample: Tensor,
        noise: Tensor | None = None,
        prev_sample: Tensor | None = None,
    ) -> SolverStep:
        """Step `sample` from sigmas[index] to sigmas[index + 1] with the model's velocity `model_output`.

        Pass `noise` to draw a stochastic step, or `prev_sample` to score a given one (log_prob of that
        transition); with neither the step is deterministic, which a stochastic solver takes as its noise-free
        (probability-flow ODE) step.
        """
        self._record(index, model_output)
        sigma, sigma_next = float(self.sigmas[index]), float(self.sigmas[index + 1])
        if noise is None and prev_sample is None:
            return SolverStep(prev_sample=self.deterministic_step(model_output, sample, sigma, sigma_next))
        if not self.stochastic[index]:
            raise ValueError(f"{type(self).__name__} step {index} of {self.num_steps} is deterministic: "
                             "pass neither noise nor prev_sample")
        out = self.stochastic_step(model_output, sample, sigma, sigma_next, noise, prev_sample)
        return SolverStep(prev_sample=out.sample, mean=out.mean, std=out.std, log_prob=out.log_prob)

    def deterministic_step(self, model_output: Tensor, sample: Tensor, sigma: float, sigma_next: float) -> Tensor:
        return ode_step(sample, model_output, sigma, sigma_next)

    def stochastic_step(self, model_output: Tensor, sample: Tensor, sigma: float, sigma_next: float,
                        noise: Tensor | None, prev_sample: Tensor | None) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} has no stochastic step")

    def _record(self, index: int, model_output: Tensor) -> None:
        if index == self.step_index - 1 and self.model_outputs:  # the same step again
            self.model_outputs[-1] = model_output
            return
        if index != self.step_index or index >= self.num_steps:
            raise ValueError(f"{type(self).__name__}: step index {index} out of order; expected {self.step_index} "
                             f"of {self.num_steps} (steps run in order after set_timesteps)")
        self.model_outputs = (self.model_outputs + [model_output])[-self.order:]
        self.step_index += 1


class EulerODESolver(Solver):
    """Euler steps of the probability-flow ODE, x + v (sigma_next - sigma) (diffusers
    FlowMatchEulerDiscreteScheduler). Never draws noise."""


class _NoisySolver(Solver):
    """Every step but the last is stochastic; the last is the ODE step, so samples end clean (Flow-GRPO adds noise
    there too; in pixel space that noise would be visible and scored)."""

    def __init__(self, noise_level: float) -> None:
        if not 0 <= noise_level <= 1:
            raise ValueError(f"noise_level must be in [0, 1], got {noise_level}")
        super().__init__()
        self.noise_level = noise_level

    @property
    def stochastic(self) -> tuple[bool, ...]:
        return (True,) * (self.num_steps - 1) + (False,)


class FlowSDESolver(_NoisySolver):
    """Flow-GRPO's reverse SDE (arXiv 2505.05470; `flow_matching.sde_step`) with noise level a."""

    def stochastic_step(self, model_output: Tensor, sample: Tensor, sigma: float, sigma_next: float,
                        noise: Tensor | None, prev_sample: Tensor | None) -> StepOutput:
        return sde_step(sample, model_output, sigma, sigma_next, self.noise_level, noise=noise,
                        prev_sample=prev_sample)


class CPSSolver(_NoisySolver):
    """Coefficients-preserving sampling (arXiv 2509.05952; `flow_matching.cps_step`) with noise level a."""

    def stochastic_step(self, model_output: Tensor, sample: Tensor, sigma: float, sigma_next: float,
                        noise: Tensor | None, prev_sample: Tensor | None) -> StepOutput:
        return cps_step(sample, model_output, sigma, sigma_next, self.noise_level, noise=noise,
                        prev_sample=prev_sample)


class SASolver(Solver):
    """SA-Solver (Xue et al., NeurIPS 2023; `sa_solver.SAStepper`) for a flow model: x_t = (1 - sigma) x0 +
    sigma eps, so the clean-sample prediction is x - sigma v. tau is `tau` while sigma lies in `tau_window`
    (diffusers' default: tau 1 for timesteps 200-800 of 1000) and 0 outside; tau = 0 everywhere is a deterministic
    multistep ODE solver. Stochastic steps need their noise; each step is taken once."""

    memoryless = False

    def __init__(self, predictor_order: int = 2, corrector_order: int = 2, tau: float = 1.0,
                 tau_window: Sequence[float] = (0.2, 0.8)) -> None:
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        if len(tau_window) != 2 or not 0 <= tau_window[0] <= tau_window[1] <= 1:
            raise ValueError(f"tau_window must be [low, high] with 0 <= low <= high <= 1, got {list(tau_window)}")
        super().__init__()
        self.predictor_order, self.corrector_order = predictor_order, corrector_order
        self.tau, self.tau_window = float(tau), (float(tau_window[0]), float(tau_window[1]))
        check_orders(predictor_order, corrector_order)
        self.stepper: SAStepper | None = None

    def reset(self) -> None:
        super().reset()
        if self.sigmas is not None:
            sigmas = self.sigmas.double()
            self.stepper = SAStepper((1 - sigmas).tolist(), sigmas.tolist(), self.step_taus(),
                                     self.predictor_order, self.corrector_order)

    def step_taus(self) -> list[float]:
        """tau of each step, from the sigma where it starts."""
        low, high = self.tau_window
        return [self.tau if low <= float(s) <= high else 0.0 for s in self.sigmas[:-1]]

    @property
    def stochastic(self) -> tuple[bool, ...]:
        return tuple(tau > 0 for tau in self.step_taus())

    def step(self, model_output: Tensor, index: int, sample: Tensor, noise: Tensor | None = None,
             prev_sample: Tensor | None = None) -> SolverStep:
        if prev_sample is not None:
            raise ValueError("SA-Solver does not score given transitions (no log_prob); Flow-GRPO rollouts need "
                             "sampler sde or cps")
        if self.stepper is None:
            raise RuntimeError("SASolver: call set_timesteps(grid) before stepping")
        # The stepper keeps the predictions it interpolates and checks the step order itself.
        prediction = sample - float(self.sigmas[index]) * model_output
        return SolverStep(prev_sample=self.stepper.step(index, sample, prediction, noise))


class ConsistencySolver(Solver):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; `diffrl.algorithms.consistency`): a step maps x
    at sigma to the clean sample x0 = x - sigma v (the consistency function) and re-noises it to the next grid point,
    (1 - sigma_next) x0 + sigma_next z; the last step returns x0. One model call per step (NFE = steps)."""

    @property
    def stochastic(self) -> tuple[bool, ...]:
        return (True,) * (self.num_steps - 1) + (False,)

    def deterministic_step(self, model_output: Tensor, sample: Tensor, sigma: float, sigma_next: float) -> Tensor:
        """The noise-free step: x0 re-noised with the noise x and v imply, eps = x + (1 - sigma) v (the ODE's
        DDIM-form step; the last step, sigma_next = 0, returns x0)."""
        x, v = sample.float(), model_output.float()
        return (1 - sigma_next) * (x - sigma * v) + sigma_next * (x + (1 - sigma) * v)

    def stochastic_step(self, model_output: Tensor, sample: Tensor, sigma: float, sigma_next: float,
                        noise: Tensor | None, prev_sample: Tensor | None) -> StepOutput:
        mean = (1 - sigma_next) * (sample.float() - sigma * model_output.float())
        std = torch.full_like(mean[:1], sigma_next)
        drawn = prev_sample.float() if prev_sample is not None else mean + sigma_next * noise.float()
        log_prob = (-((drawn - mean) ** 2) / (2 * sigma_next**2) - math.log(sigma_next)
                    - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
        return StepOutput(sample=drawn, mean=mean, std=std, log_prob=log_prob)


SOLVERS: dict[str, type[Solver]] = {"ode": EulerODESolver, "sde": FlowSDESolver, "cps": CPSSolver,
                                    "sa_solver": SASolver, "consistency": ConsistencySolver}


def build_solver(name: str, **options) -> Solver:
    """A fresh solver by name ("ode", "sde", "cps", "sa_solver", "consistency") with its options (noise_level for sde and cps;
    predictor_order, corrector_order, tau, tau_window for sa_solver)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; allowed: {', '.join(SOLVERS)}")
    solver_class = SOLVERS[name]
    try:
        inspect.signature(solver_class).bind(**options)
    except TypeError:
        accepted = [p for p in inspect.signature(solver_class).parameters]
        raise ValueError(f"solver {name!r} takes options {accepted or 'none'}, got {sorted(options)}") from None
    return solver_class(**options)
