"""DGPO, Direct Group Preference Optimization (Luo, Hu, Tang, arXiv 2510.08425; Luo-Yihong/DGPO,
scripts/train_sd3_dgpo.py, compute_group_dgpo_loss_allreduce).

DGPO learns from group-level preferences on final (ODE) samples, with no per-step log-probs. Each sample i of a
prompt's group of G, at a shared timestep t and shared noise, has the flow-matching errors dsm_i = mean ||v_target -
v_theta(x_t)||^2 and ref_i (the same for the frozen reference), and delta_i = dsm_i - ref_i. The group's
Bradley-Terry objective between its positive (A > 0) and negative (A < 0) members, weighted by the advantages, is
-log sigmoid(-S) with S = (beta / G) sum_i A_i delta_i; its gradient sigmoid(S) (beta / G) sum_i A_i grad dsm_i is
what upstream's loss mean_i(sg[sigmoid(S)] A_i dsm_i) gives, beta dropped from the gradient as there.
"""

from __future__ import annotations

import torch
from torch import Tensor


def flow_matching_error(v: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """[B] mean over non-batch dims of (v - (eps - x0))^2, in float32."""
    return ((v.float() - (eps.float() - x0.float())) ** 2).flatten(1).mean(1)


def dgpo_loss(dsm: Tensor, ref: Tensor, advantages: Tensor, groups: Tensor, beta: float) -> tuple[Tensor, dict]:
    """mean_i(sigmoid(S_g(i)) A_i dsm_i), S_g = (beta / |g|) sum_{i in g} A_i (dsm_i - ref_i) detached.

    dsm carries the gradient; ref is the reference's error; `groups` [B] labels the rows that share one group and
    one timestep (each label's rows form one S). Stats: the mean group S and the mean sigmoid weight."""
    delta = (dsm.detach() - ref.detach()).double()
    labels, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    terms = (advantages.double() * delta)
    s = torch.zeros(len(labels), dtype=torch.float64, device=dsm.device).index_add(0, inverse, terms)
    s = beta * s / counts
    weight = torch.sigmoid(s)[inverse].float()
    loss = (weight * advantages.float() * dsm).mean()
    return loss, {"group_s": s.mean().float(), "sigmoid_weight": torch.sigmoid(s).mean().float()}
