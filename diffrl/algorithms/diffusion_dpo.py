"""Diffusion-DPO (Wallace et al., arXiv 2311.12908; SalesforceAIResearch/DiffusionDPO train.py) in the
flow-matching form of yifan123/flow_grpo (scripts/train_sd3_dpo.py): the winner and the loser of a pair are noised
at one shared timestep with one shared noise, and

    loss = -log sigmoid(-beta / 2 [(mse_w - mse_w_ref) - (mse_l - mse_l_ref)])

with mse the mean over non-batch dims of the velocity error ||v(x_t) - (eps - x0)||^2 (the paper's T w(lambda_t)
constant absorbed into beta). Online pairs are the best and the worst sample of each prompt's group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dpo_loss(mse_w: Tensor, mse_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float,
             weights: Tensor | None = None) -> tuple[Tensor, dict]:
    """Mean over pairs of w * -log sigmoid(-beta / 2 ((mse_w - ref_w) - (mse_l - ref_l))) (w: per-pair weights,
    default 1); stats: the implicit reward accuracy (share of pairs whose winner gained more than the loser) and the
    mean margin."""
    margin = (mse_w - ref_w.detach()) - (mse_l - ref_l.detach())
    inside = -0.5 * beta * margin
    per_pair = -F.logsigmoid(inside)
    loss = (per_pair if weights is None else per_pair * weights).mean()
    with torch.no_grad():
        stats = {"dpo_accuracy": (inside > 0).float().mean(), "dpo_margin": margin.mean()}
    return loss, stats


def best_worst_pairs(rewards: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(winner index, loser index, keep) per group, in label order: the highest and the lowest reward
    (the first on ties); keep is False where the group's rewards are all equal (no preference)."""
    winners, losers, keep = [], [], []
    for label in torch.unique(groups):
        members = torch.nonzero(groups == label).flatten()
        values = rewards[members]
        winners.append(members[int(values.argmax())])
        losers.append(members[int(values.argmin())])
        keep.append(bool(values.max() > values.min()))
    return torch.stack(winners), torch.stack(losers), torch.tensor(keep)
