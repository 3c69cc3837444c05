"""RL objectives of masked-diffusion LMs (pure tensor math): diffu-GRPO, its coupled-mask variant and wd1.

A masked-diffusion LM has no tractable sequence likelihood, so the objectives estimate per-token log-probabilities
of a completion o given its prompt q from forward passes on masked copies of [q | o]:

- **diffu-GRPO** (Zhao et al., d1, arXiv 2504.12216; dllm-reasoning/d1 `diffu-grpo/diffu_grpo_trainer.py`,
  `forward_process` and `compute_loss`): one pass with the whole completion masked and each prompt token masked
  with probability `p_mask_prompt` (0.15 in d1's runs); log pi(o_k | q) ~ log softmax of the pass at slot k. The
  mask is redrawn for each of the `mu` inner updates from a seed fixed at rollout time, the same seed for the old
  and the current log-probabilities, so the ratio of inner update 0 is exactly 1. Loss per token:
  -min(r A, clip(r, 1 - eps, 1 + eps) A) + beta * KL_k3(pi_ref || pi), averaged over every completion token of the
  batch; A = r_i - mean of its group (d1 divides by no std).
- **coupled diffu-GRPO** (Gong et al., DiffuCoder, arXiv 2506.20639; apple/ml-diffucoder
  `src/open_r1/coupled_grpo.py`, `forward_process` and `selective_log_softmax`): no prompt masking; three passes,
  the completion fully masked, masked where u < t and masked where u >= t (t ~ U(0.2, 0.8)), so every completion
  token is masked in exactly one of the two coupled passes; a token's log-prob is the mean of the full-mask pass's
  and of its coupled pass's, the latter weighted by 1/t or 1/(1 - t). DiffuCoder draws one t per batch; here each
  row draws its own from its generator, so a row never depends on the rest of its batch (N ranks equal one).
  DiffuCoder's advantages are leave-one-out (r_i - mean of the others in the group).
- **wd1** (Tang et al., arXiv 2507.08838; xiaohangt/wd1 `wd1/trainers/rev_grpo_trainer.py`, `compute_loss`):
  ratio-free weighted likelihood: loss = sum_i (softmax(-A)_i - softmax(A)_i) * sum_k log pi(o_ik | q_i), the
  softmaxes over each group (the code takes them over a micro-batch that is exactly one group), temperature 1, the
  per-token log-probs summed over the completion, no old policy, no clipping and no KL term; log-probs from d1's
  one-step estimator. With several groups in a batch the loss is the mean over groups.
"""

from __future__ import annotations

import torch
from torch import Tensor


def centered_advantages(rewards: Tensor, group_ids: Tensor, leave_one_out: bool = False) -> Tensor:
    """r_i - mean of its group (d1, wd1), or with leave_one_out r_i - mean of the group's other members
    (DiffuCoder); no std division. A group of one gets 0."""
    if rewards.ndim != 1 or rewards.shape != group_ids.shape:
        raise ValueError(f"rewards and group_ids must be 1-D of one length, got {tuple(rewards.shape)} and "
                         f"{tuple(group_ids.shape)}")
    values = rewards.double()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add(0, inverse, values)[inverse]
    n = counts[inverse].double()
    if leave_one_out:
        out = torch.where(n > 1, values - (sums - values) / (n - 1).clamp(min=1), torch.zeros_like(values))
    else:
        out = values - sums / n
    return out.to(rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype())


def prompt_masks(prompt_length: int, length: int, p_mask_prompt: float,
                 generators: list[torch.Generator]) -> Tensor:
    """d1's one-step masks, bool [N, length]: the completion (slots >= prompt_length) always masked, each prompt
    slot masked with probability p_mask_prompt; row i draws from generators[i]."""
    if not 0 <= p_mask_prompt < 1:
        raise ValueError(f"p_mask_prompt must be in [0, 1), got {p_mask_prompt}")
    rows = []
    for gen in generators:
        row = torch.ones(length, dtype=torch.bool)
        row[:prompt_length] = torch.rand(prompt_length, generator=gen) < p_mask_prompt
        rows.append(row)
    return torch.stack(rows)


def coupled_masks(prompt_length: int, length: int, generators: list[torch.Generator], low: float = 0.2,
                  high: float = 0.8) -> tuple[Tensor, Tensor, Tensor]:
    """DiffuCoder's coupled masks: (masked where u < t, masked where u >= t; both bool [N, length], the prompt never
    masked) and t [N] ~ U(low, high), one per row. Every completion slot is masked in exactly one of the two."""
    if not 0 < low <= high < 1:
        raise ValueError(f"coupled mask ratios need 0 < low <= high < 1, got ({low}, {high})")
    first, second, ts = [], [], []
    for gen in generators:
        t = low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))
        u = torch.rand(length - prompt_length, generator=gen, dtype=torch.float64)
        a = torch.zeros(length, dtype=torch.bool)
        a[prompt_length:] = u < t
        b = torch.zeros(length, dtype=torch.bool)
        b[prompt_length:] = ~(u < t)
        first.append(a)
        second.append(b)
        ts.append(t)
    return torch.stack(first), torch.stack(second), torch.tensor(ts, dtype=torch.float64)


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per slot: logits [N, L, V], targets [N, L] -> [N, L] (float32 math)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def coupled_logprobs(full: Tensor, first: Tensor, second: Tensor, first_mask: Tensor, t: Tensor) -> Tensor:
    """Per-token log-probs [N, L] from the full-mask pass and the two coupled passes: (full + (first / t where the
    first pass masked the token, else second / (1 - t))) / 2 (DiffuCoder's `selective_log_softmax`)."""
    t = t.to(full.dtype)[:, None]
    return (full + torch.where(first_mask, first / t, second / (1 - t))) / 2


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def diffu_grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor,
                    eps: float, beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """d1's clipped objective. logp, old_logp, ref_logp: per-token log-probs [N, L] (old and ref without grad;
    ref may be None when beta is 0); advantages [N]; mask [N, L]: the completion tokens that count. Returns the
    token-level mean over the batch and, detached, the mean ratio, the clipped share and the mean KL."""
    if beta and ref_logp is None:
        raise ValueError("diffu-GRPO with kl beta > 0 needs the reference log-probabilities")
    weight = mask.to(logp.dtype)
    total = weight.sum().clamp(min=1.0)
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype)[:, None]
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta:
        per_token = per_token + beta * kl
    loss = (per_token * weight).sum() / total
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > eps).to(logp.dtype)
        stats = {"ratio": (ratio * weight).sum() / total, "clip_fraction": (clipped * weight).sum() / total,
                 "kl": (kl * weight).sum() / total}
    return loss, stats


def wd1_weights(advantages: Tensor, group_ids: Tensor) -> Tensor:
    """softmax(-A) - softmax(A) within each group [N] (constants): positive for worse-than-average completions
    (their likelihood is pushed down), negative for better ones."""
    out = torch.zeros_like(advantages, dtype=torch.float64)
    for group in torch.unique(group_ids):
        index = group_ids == group
        a = advantages[index].double()
        out[index] = torch.softmax(-a, 0) - torch.softmax(a, 0)
    return out.to(advantages.dtype)


def wd1_loss(logp: Tensor, advantages: Tensor, group_ids: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """wd1's objective: per group, sum_i w_i * sum_k logp_ik with w = wd1_weights; the mean over the groups in
    the batch (wd1 averages its one-group micro-batches over gradient accumulation). Returns the loss and, detached,
    the mean per-sequence log-likelihood."""
    sequence = (logp * mask.to(logp.dtype)).sum(-1)
    groups = len(torch.unique(group_ids))
    loss = (wd1_weights(advantages, group_ids).to(logp.dtype).detach() * sequence).sum() / groups
    return loss, {"sequence_logp": sequence.detach().mean()}
