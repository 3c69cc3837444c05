"""The learner objective of adversarial fine-tuning (`adversarial`, see `diffrl.algorithms.adversarial`), registered
in the learner's objective registry.

Rows are (clean image, caption) pairs with a per-row timestep t ~ U(min_t, 1) and noise drawn from the row's seed
(the same draws as `flow_matching_x0`, so N ranks compute the update one rank does) and a perturbation delta that
starts at 0. The learner runs the minibatch `passes` = adv_steps times (free adversarial training): each pass is one
optimizer step (and one EMA update), and after each backward `ascend` moves the rows' delta along the normalized
gradient and projects it onto the ball. With adv_steps = 1 delta stays 0 and this is standard fine-tuning.

The network is trained in the parameterization `prediction`: x0 (the built-in model's own), velocity (the diffusers
flow models') or epsilon, over the flow-matching interpolation x_t = (1 - t) x0 + t eps; the target is the one that
keeps implying x0 under the perturbation (`perturbed_target`).

`adversarial_consistency` is the consistency-model variant (`diffrl.algorithms.consistency`): consistency
distillation from the frozen base (the learner's reference copy is the teacher) with the same perturbation on the
online network's input; the target network is the EMA shadow "target".
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.algorithms.adversarial import ascend, ball_radius, perturbed_target
from diffrl.algorithms.consistency import consistency_function, discretization, teacher_step
from diffrl.algorithms.flow_matching import seeded_interpolation
from diffrl.models.adapter import Conditioning
from diffrl.workers.objective_base import Models, Objective


def predict(models: Models, prediction: str, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
    """The trained network's output in `prediction` for input x at time t (flow schedule)."""
    net = models.trained()
    denoiser = getattr(net, "denoiser", net)
    t_b = t.view(-1, *([1] * (x.dim() - 1)))
    if prediction == "x0" and hasattr(denoiser, "predict_x0"):
        return denoiser.predict_x0(x, t, cond)
    v = denoiser(x, t, cond)
    if prediction == "velocity":
        return v
    if prediction == "epsilon":
        return x + (1 - t_b) * v
    return x - t_b * v


class AdversarialObjective(Objective):
    """Free adversarial fine-tuning of a diffusion/flow denoiser; the "eval" EMA shadow is evaluated and saved."""

    needs_reference = False
    advantages = None

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        self.cfg = cfg
        self.prediction = cfg["prediction"]
        self.passes = int(cfg["adv_steps"])
        self.trains = cfg.get("trains", "denoiser")
        start, decay = cfg["ema_start"], cfg["ema_decay"]
        self.shadows = {"eval": lambda step: decay if step > start else 0.0}

    def rows(self, batch, step: int) -> dict[str, Tensor]:
        t, noise = seeded_interpolation(batch.x0, batch.seeds.tolist())
        t = t.clamp_min(self.cfg["min_t"])
        t_b = t.view(-1, *([1] * (batch.x0.dim() - 1)))
        x0 = batch.x0
        return {"index": torch.arange(len(batch)), "t": t, "x0": x0, "eps": noise,
                "x_t": (1 - t_b) * x0 + t_b * noise, "delta": torch.zeros_like(x0)}

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        delta = rows["delta"].detach().clone().requires_grad_(self.passes > 1)
        rows["delta_leaf"] = delta  # `ascend` reads its gradient after the backward
        x, t = rows["x_t"] + delta, rows["t"]
        output = predict(models, self.prediction, x, t, cond)
        target = perturbed_target(self.prediction, rows["x0"], rows["eps"], delta, t)
        loss = ((output - target) ** 2).mean()
        norm = torch.linalg.vector_norm(delta.detach().flatten(1), dim=1).mean()
        return loss, {"mse": loss.detach(), "delta_norm": norm}

    def ascend(self, part: dict[str, Tensor], rows: dict[str, Tensor], rows_slice: slice, loss_scale: float) -> None:
        """After the backward of micro-batch `part` (rows[rows_slice]): move its rows' delta (free AT)."""
        leaf = part["delta_leaf"]
        if leaf.grad is None:
            return
        radius = ball_radius(self.cfg["adv_max_norm"], leaf.shape[1:])
        rows["delta"][rows_slice] = ascend(leaf, leaf.grad, self.cfg["adv_lr"], radius, loss_scale)


class AdversarialConsistencyObjective(AdversarialObjective):
    """Consistency distillation from the frozen base with free adversarial training of the online input."""

    section = "adversarial"  # the same learner.adversarial settings

    needs_reference = True  # the teacher: the base model's frozen copy

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        super().__init__(cfg, rollout_cfg)
        self.grid = discretization(cfg["cd_steps"], cfg["cd_t_min"])
        self.shadows = {**self.shadows, "target": lambda step, mu=cfg["target_decay"]: mu}

    def rows(self, batch, step: int) -> dict[str, Tensor]:
        ns, eps = [], []
        for seed in batch.seeds.tolist():
            gen = torch.Generator().manual_seed(int(seed))
            ns.append(torch.randint(0, len(self.grid) - 1, (1,), generator=gen))
            eps.append(torch.randn(batch.x0.shape[1:], generator=gen))
        n, noise = torch.cat(ns), torch.stack(eps)
        t_next, t_cur = self.grid[n + 1], self.grid[n]
        t_b = t_next.view(-1, *([1] * (batch.x0.dim() - 1)))
        x0 = batch.x0
        return {"index": torch.arange(len(batch)), "t": t_next, "t_cur": t_cur, "x0": x0, "eps": noise,
                "x_t": (1 - t_b) * x0 + t_b * noise, "delta": torch.zeros_like(x0)}

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        delta = rows["delta"].detach().clone().requires_grad_(self.passes > 1)
        rows["delta_leaf"] = delta
        x_t, t, t_cur = rows["x_t"], rows["t"], rows["t_cur"]
        with torch.no_grad():
            x_cur = teacher_step(x_t, models.reference(x_t, t, cond), t, t_cur)
            target = consistency_function(x_cur, models.shadow("target", x_cur, t_cur, cond), t_cur)
        x = x_t + delta
        online = consistency_function(x, models.policy(x, t, cond), t)
        loss = ((online - target) ** 2).mean()
        norm = torch.linalg.vector_norm(delta.detach().flatten(1), dim=1).mean()
        with torch.no_grad():
            x0_error = ((online.detach() - rows["x0"]) ** 2).mean()
        return loss, {"consistency": loss.detach(), "x0_mse": x0_error, "delta_norm": norm}
