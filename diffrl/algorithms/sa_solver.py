"""SA-Solver: stochastic Adams predictor-corrector sampling of diffusion and flow models.

Xue et al., "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models" (NeurIPS 2023,
scxue/SA-Solver; diffusers `SASolverScheduler`). The variance-controlled reverse SDE with stochasticity tau(t)
(tau = 0 is the probability-flow ODE) is integrated in log-SNR lambda = log(alpha / sigma) in its data-prediction
form: with D_j the model's clean-sample prediction at grid point j and kappa = 1 + tau^2, one step from s to t is

    x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s + kappa alpha_t sum_k D_k int_{-h}^{0} e^{kappa u} l_k(u) du
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi,        h = lambda_t - lambda_s,

where l_k are the Lagrange basis polynomials through the lambdas of the D_k used (shifted by lambda_t, which keeps
the integrals finite when lambda_t is large). The predictor (Adams-Bashforth) interpolates the last p predictions;
the corrector (Adams-Moulton) redoes the previous step once the model has been called at the predicted point,
interpolating that new prediction and the q - 1 before it, with the previous step's noise. One model call per step
(predict-evaluate-correct). Orders warm up (min(order, points available)) and fall back to 1 on the last step, and
the order-2 coefficients take diffusers' few-step variant; with those conventions this module agrees with
`SASolverScheduler` step by step.

Everything here is explicit: the schedule (alpha_j, sigma_j at every grid point), the per-step noise and tau, and the
model as a callable, so each step can be checked against any reference. Grid ends with an infinite lambda are taken
as exact limits: a flow grid may start at sigma = 1 (alpha = 0, lambda = -inf) and end at sigma = 0 (lambda = +inf,
where the last step returns the data prediction). Interpolation points with an infinite lambda are left out (the
Lagrange basis degenerates to the remaining points there).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from torch import Tensor

MAX_ORDER = 4


def log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma), with -inf at alpha = 0 and +inf at sigma = 0."""
    if alpha == 0:
        return -math.inf
    if sigma == 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def exponential_moments(kappa: float, h: float, count: int) -> list[float]:
    """int_{-h}^{0} e^{kappa u} u^n du for n = 0 .. count - 1 (h may be +inf), by parts:
    I_0 = (1 - e^{-kappa h}) / kappa, I_n = -((-h)^n e^{-kappa h} + n I_{n-1}) / kappa."""
    decay = 0.0 if math.isinf(h) else math.exp(-kappa * h)
    moments = [(1.0 - decay) / kappa]
    for n in range(1, count):
        edge = 0.0 if math.isinf(h) else (-h) ** n * decay
        moments.append(-(edge + n * moments[-1]) / kappa)
    return moments


def adams_coefficients(nodes: Sequence[float], kappa: float, h: float) -> list[float]:
    """kappa int_{-h}^{0} e^{kappa u} l_k(u) du for the Lagrange basis l_k through `nodes` (lambdas shifted by the
    step's end, newest first). With two nodes the basis polynomial's linear part is integrated without the
    exponential weight (diffusers' order-2 variant for few-step sampling; it keeps the order)."""
    order = len(nodes)
    moments = exponential_moments(kappa, h, order)
    coefficients = []
    for k, node in enumerate(nodes):
        others = [m for j, m in enumerate(nodes) if j != k]
        basis = np.poly1d([1.0])
        for other in others:
            basis *= np.poly1d([1.0, -other]) / (node - other)
        powers = basis.coeffs[::-1]  # constant term first
        coefficients.append(kappa * sum(float(c) * moments[n] for n, c in enumerate(powers)))
    if order == 2:
        # l_0's linear part is (u + h) / r with r the nodes' distance: int (u + h)(1 - e^{kappa u}) du / r.
        span = nodes[0] - nodes[1]
        shift = kappa * (h * h / 2 - (h * kappa - 1 + math.exp(-kappa * h)) / kappa**2) / span
        coefficients[0] += shift
        coefficients[1] -= shift
    return coefficients


def check_orders(predictor_order: int, corrector_order: int) -> None:
    """A ValueError naming the order that is out of range (predictor 1..4, corrector 0..4)."""
    if not 1 <= predictor_order <= MAX_ORDER:
        raise ValueError(f"predictor_order must be 1..{MAX_ORDER}, got {predictor_order}")
    if not 0 <= corrector_order <= MAX_ORDER:
        raise ValueError(f"corrector_order must be 0..{MAX_ORDER} (0: no corrector), got {corrector_order}")


class SAStepper:
    """SA-Solver over one trajectory on a fixed schedule: `step(i, sample, prediction, noise)` once per grid step.

    `alphas`/`sigmas`: the schedule at the N + 1 grid points (noise first); `taus`: tau of each of the N intervals;
    predictor_order 1-4; corrector_order 0 (none) to 4. The sample passed to step i is the point the model was just
    called at (the predictor's output); the corrector first replaces it, then the predictor moves on from there.
    """

    def __init__(self, alphas: Sequence[float], sigmas: Sequence[float], taus: Sequence[float] | float = 0.0,
                 predictor_order: int = 2, corrector_order: int = 2) -> None:
        if len(alphas) != len(sigmas) or len(alphas) < 2:
            raise ValueError(f"alphas and sigmas need one value per grid point (at least 2), got {len(alphas)} "
                             f"and {len(sigmas)}")
        check_orders(predictor_order, corrector_order)
        self.alphas = [float(a) for a in alphas]
        self.sigmas = [float(s) for s in sigmas]
        self.lambdas = [log_snr(a, s) for a, s in zip(self.alphas, self.sigmas)]
        if any(b <= a for a, b in zip(self.lambdas, self.lambdas[1:])):
            raise ValueError(f"log-SNR must increase along the grid (noise to data), got {self.lambdas}")
        steps = len(alphas) - 1
        self.taus = [float(taus)] * steps if isinstance(taus, (int, float)) else [float(t) for t in taus]
        if len(self.taus) != steps or any(t < 0 for t in self.taus):
            raise ValueError(f"taus needs {steps} non-negative values (one per step), got {list(self.taus)}")
        self.predictor_order, self.corrector_order = predictor_order, corrector_order
        self.predictions: dict[int, Tensor] = {}  # grid index -> D there; the last MAX_ORDER are kept
        self.next_index = 0
        self.last_sample: Tensor | None = None  # where the last step started (after its correction)
        self.last_noise: Tensor | None = None

    @property
    def num_steps(self) -> int:
        return len(self.alphas) - 1

    def step(self, index: int, sample: Tensor, prediction: Tensor, noise: Tensor | None = None) -> Tensor:
        """x at grid point index + 1, from x at `index` (where the model predicted `prediction`). `noise` is the
        standard normal of this step; it may be None only where this step's tau is 0."""
        if index != self.next_index or index >= self.num_steps:
            raise ValueError(f"SA-Solver step {index} out of order: expected step {self.next_index} of "
                             f"{self.num_steps}")
        if noise is None and self.taus[index] > 0:
            raise ValueError(f"SA-Solver step {index} has tau={self.taus[index]}: it needs its noise")
        self.predictions[index] = prediction
        self.predictions.pop(index - MAX_ORDER, None)
        self.next_index += 1
        if index > 0 and self.corrector_order:
            order = min(self.corrector_order, index + 1, self.num_steps - index + 2)
            sample = self._adams(index - 1, index, self.last_sample, self.last_noise, order)
        self.last_sample, self.last_noise = sample, noise
        order = min(self.predictor_order, index + 1, self.num_steps - index)
        return self._adams(index, index + 1, sample, noise, order)

    def _adams(self, start: int, end: int, x: Tensor, noise: Tensor | None, order: int) -> Tensor:
        """One exponential-integrator step from grid point `start` to `end`, interpolating the `order` newest
        predictions (the predictor's newest is at `start`, the corrector's at `end`)."""
        newest = self.next_index - 1
        points = [p for p in range(newest, newest - order, -1) if math.isfinite(self.lambdas[p])] or [newest]
        lam_s, lam_t = self.lambdas[start], self.lambdas[end]
        if math.isinf(lam_t):  # the data end (sigma = 0): the order-1 limit is the newest prediction itself
            return self.predictions[newest].clone()
        h = lam_t - lam_s
        tau = self.taus[start]
        kappa = 1.0 + tau * tau
        coefficients = adams_coefficients([self.lambdas[p] - lam_t for p in points], kappa, h)
        decay = 1.0 if tau == 0 else (0.0 if math.isinf(h) else math.exp(-tau * tau * h))
        out = (self.sigmas[end] / self.sigmas[start] * decay) * x
        for coefficient, p in zip(coefficients, points):
            out = out + (self.alphas[end] * coefficient) * self.predictions[p]
        if tau > 0:
            out = out + (self.sigmas[end] * math.sqrt(1.0 - decay * decay)) * noise
        return out


def sa_solver_sample(
    data_prediction: Callable[[Tensor, int], Tensor],
    x: Tensor,
    alphas: Sequence[float],
    sigmas: Sequence[float],
    noises: Sequence[Tensor | None] | None = None,
    predictor_order: int = 2,
    corrector_order: int = 2,
    taus: Sequence[float] | float = 0.0,
) -> Tensor:
    """Sample from the noise `x` at grid point 0 to the last grid point; `data_prediction(x_i, i)` is the model's
    clean-sample prediction at grid point i, `noises[i]` the standard normal of step i (unused where tau is 0)."""
    stepper = SAStepper(alphas, sigmas, taus, predictor_order, corrector_order)
    for index in range(stepper.num_steps):
        noise = None if noises is None else noises[index]
        x = stepper.step(index, x, data_prediction(x, index), noise)
    return x
