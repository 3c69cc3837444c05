"""A Gaussian mixture data distribution with its exact denoiser and exact probability-flow ODE solution.

For x_t = alpha x0 + sigma eps and x0 drawn from sum_k w_k N(mu_k, diag(v_k)), x_t given component k is
N(alpha mu_k, diag(alpha^2 v_k + sigma^2)), so the posterior mean E[x0 | x_t] is in closed form: the components'
posterior weights times their Gaussian posterior means mu_k + alpha v_k / (alpha^2 v_k + sigma^2) (x_t - alpha mu_k).
With that denoiser the flow ODE dx/ds = (x - E[x0 | x_s]) / s (alpha = 1 - s, sigma = s) is the exact sampler of the
mixture, so a few-step solver's final sample can be compared with the exact one from the same noise (the time-step
schedule check of benchmarks/solver_gmm.py). Everything runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor


@dataclass(frozen=True)
class GaussianMixture:
    """weights [K] (summing to 1), means [K, d], variances [K, d] (diagonal covariances), float64."""

    weights: Tensor
    means: Tensor
    variances: Tensor

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.variances.shape != (k, d):
            raise ValueError(f"weights [K], means [K, d], variances [K, d] expected, got {tuple(self.weights.shape)}, "
                             f"{tuple(self.means.shape)}, {tuple(self.variances.shape)}")
        if not bool((self.variances > 0).all()) or not bool((self.weights > 0).all()):
            raise ValueError("weights and variances must be positive")
        if abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError(f"weights must sum to 1, got {float(self.weights.sum())}")

    @classmethod
    def random(cls, num_components: int, dim: int, generator: torch.Generator, mean_scale: float = 1.0,
               std_range: tuple[float, float] = (0.2, 0.5)) -> GaussianMixture:
        """K components with N(0, mean_scale^2) means, per-dimension stds uniform in std_range and weights from
        uniform draws in [0.5, 1.5], normalized."""
        means = mean_scale * torch.randn(num_components, dim, generator=generator, dtype=torch.float64)
        low, high = std_range
        stds = low + (high - low) * torch.rand(num_components, dim, generator=generator, dtype=torch.float64)
        weights = 0.5 + torch.rand(num_components, generator=generator, dtype=torch.float64)
        return cls(weights / weights.sum(), means, stds**2)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        """[count, d] exact draws of x0."""
        components = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.dim, generator=generator, dtype=torch.float64)
        return self.means[components] + self.variances[components].sqrt() * noise

    def denoise(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """E[x0 | x_t = x] for x [B, d] at x_t = alpha x0 + sigma eps; alpha, sigma floats or [B] tensors."""
        x = x.double()
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
        marginal_var = alpha**2 * self.variances + sigma**2  # [B or 1, K, d]
        offset = x[:, None, :] - alpha * self.means  # [B, K, d]
        log_likelihood = -0.5 * (marginal_var.log() + offset**2 / marginal_var).sum(-1)
        responsibilities = torch.softmax(self.weights.log() + log_likelihood, dim=-1)  # [B, K]
        component_means = self.means + alpha * self.variances / marginal_var * offset
        return (responsibilities[..., None] * component_means).sum(1)

    def flow_velocity(self, x: Tensor, s: float) -> Tensor:
        """Exact flow-ODE velocity dx/ds = (x - E[x0 | x_s]) / s at alpha = 1 - s, sigma = s (0 < s <= 1)."""
        return (x - self.denoise(x, 1.0 - s, s)) / s

    def flow_ode_solution(self, noise: Tensor, rtol: float = 1e-11, atol: float = 1e-11,
                          s_end: float = 1e-7) -> Tensor:
        """The exact sample x(0) of the flow ODE from x(1) = noise [B, d]: scipy's DOP853 (8th order) from s = 1 to
        s_end, then the denoiser, whose gap to x(0) is O(s_end^2)."""
        shape = noise.shape

        def rhs(s: float, y: np.ndarray) -> np.ndarray:
            return self.flow_velocity(torch.from_numpy(y).view(shape), s).reshape(-1).numpy()

        solution = solve_ivp(rhs, (1.0, s_end), noise.double().reshape(-1).numpy(), method="DOP853", rtol=rtol,
                             atol=atol)
        if not solution.success:
            raise RuntimeError(f"flow ODE integration failed: {solution.message}")
        x_end = torch.from_numpy(solution.y[:, -1].copy()).view(shape)
        return self.denoise(x_end, 1.0 - s_end, s_end)
