"""Adversarial training of diffusion and flow models on the denoiser's input (Wang et al., "Improved Diffusion-based
Generative Model with Better Adversarial Robustness", ICLR 2025, arXiv 2502.17099; code kugwzk/AT_Diff).

The noised input x_t = a_t x0 + s_t eps is moved to x~ = x_t + delta, and the network is trained to still recover the
clean sample x0 from x~. Writing x~ = a_t x0 + s_t eps~ gives the noise that x~ implies together with x0,

    eps~ = eps + delta / s_t,

so each parameterization's target is the one that makes (x~, target) imply x0 again (delta enters the target
without gradient, AT_Diff's "delta_detach" target):

- epsilon (DDPM, a_t = sqrt(abar), s_t = sqrt(1 - abar)): target eps + delta / sqrt(1 - abar); then
  (x~ - s_t target) / a_t = x0.
- velocity (flow matching, a_t = 1 - t, s_t = t, v = eps - x0): target v + delta / t; then x~ - t target = x0.
- x0-prediction: the target is x0 itself.
- epsilon under the flow schedule (a_t = 1 - t, s_t = t): eps + delta / t; then (x~ - t target) / (1 - t) = x0.

Free adversarial training (Shafahi et al. 2019, as AT_Diff runs it): per minibatch delta starts at 0 and the same
timesteps and noise are used for A ascent steps; each step backpropagates once, takes an optimizer step with the
weights' gradient, and moves delta by alpha * g / ||g|| (g the loss gradient for delta, per-sample L2 norm), then
projects delta onto the L2 ball of radius eta * sqrt(D) (D: dimensions of one sample). A = 1 is standard training.
Defaults from AT_Diff's CIFAR-10 script: A = 3, alpha = 0.1, eta = 0.1.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

Prediction = Literal["x0", "velocity", "epsilon"]
Schedule = Literal["flow", "vp"]


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    return value.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def coefficients(t: Tensor, schedule: Schedule, like: Tensor) -> tuple[Tensor, Tensor]:
    """(a_t, s_t) of x_t = a_t x0 + s_t eps, shaped to broadcast over `like`: flow: (1 - t, t); vp: t is abar,
    (sqrt(abar), sqrt(1 - abar))."""
    t = _per_sample(t, like)
    if schedule == "flow":
        return 1 - t, t
    if schedule == "vp":
        return t.sqrt(), (1 - t).sqrt()
    raise ValueError(f"schedule: unknown {schedule!r}; allowed: flow, vp")


def perturbed_target(prediction: Prediction, x0: Tensor, eps: Tensor, delta: Tensor, t: Tensor,
                     schedule: Schedule = "flow") -> Tensor:
    """The regression target for the perturbed input x_t + delta (see the module docstring); delta is detached."""
    delta = delta.detach()
    if prediction == "x0":
        return x0
    _, s = coefficients(t, schedule, x0)
    eps_tilde = eps + delta / s
    if prediction == "epsilon":
        return eps_tilde
    if prediction == "velocity":
        if schedule != "flow":
            raise ValueError("velocity prediction is defined for the flow schedule (v = eps - x0)")
        return eps_tilde - x0
    raise ValueError(f"prediction: unknown {prediction!r}; allowed: x0, velocity, epsilon")


def ascend(delta: Tensor, grad: Tensor, step_size: float, radius: float, loss_scale: float = 1.0) -> Tensor:
    """One free-AT ascent step: delta + step_size * g / ||g|| (per-sample L2, g = grad / loss_scale), projected onto
    the L2 ball of `radius`. Under fp16 loss scaling the gradient arrives multiplied by the scale: it is unscaled
    first, and rows whose gradient overflowed (inf/nan: the optimizer skips that step too) keep their delta."""
    g = grad.detach().float() / loss_scale
    flat = g.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    flat = torch.where(finite[:, None], flat, torch.zeros_like(flat))
    norm = torch.linalg.vector_norm(flat, dim=1).clamp_min(1e-8)
    moved = delta.detach().float() + step_size * (flat / norm[:, None]).view_as(g)
    moved = project(moved, radius)
    return torch.where(_per_sample(finite, g).bool(), moved, delta.detach().float()).to(delta.dtype)


def project(delta: Tensor, radius: float) -> Tensor:
    """delta scaled per sample onto the L2 ball of `radius` (unchanged inside it)."""
    norm = torch.linalg.vector_norm(delta.flatten(1).float(), dim=1).clamp_min(1e-12)
    factor = torch.clamp(radius / norm, max=1.0)
    return delta * _per_sample(factor, delta)


def ball_radius(eta: float, sample_shape: torch.Size | tuple[int, ...]) -> float:
    """eta * sqrt(D), D the number of dimensions of one sample."""
    dims = 1
    for size in sample_shape:
        dims *= int(size)
    return float(eta) * dims ** 0.5


def perturbation_errors(predict_x0: Callable[[Tensor], Tensor], x0: Tensor, x_t: Tensor, radii: list[float],
                        attack: Literal["adversarial", "random"], generator: torch.Generator | None = None
                        ) -> list[float]:
    """Denoising error under input perturbations of growing size: for each eta in `radii`, the mean squared error
    ||x0_hat(x_t + delta) - x0||^2 / D with ||delta|| = eta * sqrt(D) per sample. `adversarial` takes delta along
    the error's gradient at x_t (a one-step L2 attack); `random` along a fixed Gaussian direction."""
    if attack == "adversarial":
        probe = x_t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            error = ((predict_x0(probe) - x0) ** 2).sum()
            (direction,) = torch.autograd.grad(error, probe)
    elif attack == "random":
        direction = torch.randn(x_t.shape, generator=generator).to(x_t)
    else:
        raise ValueError(f"attack: unknown {attack!r}; allowed: adversarial, random")
    unit = direction / torch.linalg.vector_norm(direction.flatten(1), dim=1).clamp_min(1e-12).view(-1, *([1] * (x_t.dim() - 1)))
    errors = []
    with torch.no_grad():
        for eta in radii:
            delta = unit * ball_radius(eta, x_t.shape[1:])
            errors.append(float(((predict_x0(x_t + delta) - x0) ** 2).mean()))
    return errors
