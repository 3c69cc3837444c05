"""Non-finite training state stops the run: a NaN or infinite loss, gradient norm or weight raises NonFiniteError
naming the step, the learner rank and the first bad tensor. The loss and gradient checks run before the optimizer
applies anything; the weight check after the update, so that no checkpoint or final weights are written from it."""

from __future__ import annotations

import math

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    """A loss, gradient or weight became NaN or infinite; the message names the step and the first bad tensor."""


def first_non_finite(named_tensors) -> str | None:
    """The name of the first tensor holding a NaN or an infinity (None when all are finite)."""
    for name, tensor in named_tensors:
        if tensor is not None and tensor.numel() and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


def check_loss(loss: torch.Tensor, step: int, rank: int, where: str) -> None:
    if not bool(torch.isfinite(loss.detach())):
        raise NonFiniteError(f"step {step}: the loss is {float(loss.detach())} on learner rank {rank} ({where}); "
                             f"stopped before the update")


def check_gradients(module: nn.Module, grad_norm: float, step: int, rank: int, applied: bool = False) -> None:
    """`applied`: the norm came from the engine after its step (ZeRO partitions gradients, so it cannot be read
    before), and the message says so."""
    if math.isfinite(grad_norm):
        return
    bad = first_non_finite((name, p.grad) for name, p in module.named_parameters() if p.grad is not None)
    raise NonFiniteError(f"step {step}: the gradient norm is {grad_norm} on learner rank {rank}"
                         + (f", first at '{bad}'" if bad else "")
                         + ("; the update was applied, and nothing is written from it" if applied
                            else "; stopped before the update"))


def check_weights(module: nn.Module, step: int, rank: int) -> None:
    """One reduction over the trained tensors per step; the first bad one is named only when there is one."""
    trained = [(name, p) for name, p in module.named_parameters() if p.requires_grad and p.numel()]
    if not trained or bool(torch.isfinite(torch.stack([p.detach().float().norm() for _, p in trained])).all()):
        return
    raise NonFiniteError(f"step {step}: weight '{first_non_finite(trained)}' is not finite after the update on "
                         f"learner rank {rank}; no checkpoint or weights are written from this state")
