"""Token-commit rules of masked-diffusion LM decoding: which still-masked positions a denoising step fills in.

A masked-diffusion LM (LLaDA, arXiv 2502.09992) decodes a sequence block by block; each step predicts a token for
every masked position and commits some of them, the rest staying masked for later steps. The rules here:
- top_k: LLaDA's low-confidence remasking, committing the k most confident predictions, with k from an even split
  of the block's masked count over its steps (`transfer_schedule`);
- threshold: Fast-dLLM's confidence-aware parallel decoding (arXiv 2505.22618; NVlabs/Fast-dLLM
  llada/generate.py), committing every prediction at least as confident as a threshold;
- factor: Fast-dLLM's factor rule, committing the n most confident predictions for the largest n whose n-th
  confidence c_(n) meets (n + 1) * (1 - c_(n)) <= factor.
The threshold and factor rules always commit at least one token per row with a candidate, so decoding advances.

Every tensor has a leading batch dim B and every operation is row-wise: a sequence's result never depends on what
else is in its batch. Ties in confidence are broken by the lower position (stable sorts), so commits are
deterministic. Confidences are probabilities (finite); positions that are not candidates are never committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def transfer_schedule(masked: Tensor, steps: int) -> Tensor:
    """Tokens to commit at each step [B, steps]: LLaDA's even split of each row's masked count (masked [B]) over
    `steps`, the first m % steps steps committing one more than the others."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if masked.ndim != 1:
        raise ValueError(f"masked must be a [B] count per row, got shape {tuple(masked.shape)}")
    counts = masked.long()
    step_index = torch.arange(steps, device=masked.device)
    extra = step_index < (counts % steps)[:, None]
    return (counts // steps)[:, None] + extra.long()


def block_candidates(masked: Tensor, block_start: Tensor, block_end: Tensor) -> Tensor:
    """The masked positions (masked [B, L] bool) inside each row's current block [block_start, block_end), so that
    no rule commits outside the block being decoded or over an already-decoded token."""
    if masked.ndim != 2 or block_start.shape != (masked.shape[0],) or block_end.shape != block_start.shape:
        raise ValueError(
            f"masked must be [B, L] with block_start and block_end [B], got {tuple(masked.shape)}, "
            f"{tuple(block_start.shape)} and {tuple(block_end.shape)}"
        )
    position = torch.arange(masked.shape[1], device=masked.device)
    in_block = (position >= block_start[:, None]) & (position < block_end[:, None])
    return masked & in_block


def greedy_predictions(
    logits: Tensor,
    temperature: float = 0.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """Predicted token [B, L] (long) and its confidence [B, L] (float64) from logits [B, L, V].

    Temperature 0 takes the argmax. Above 0 the token is Gumbel-max sampled, argmax(logits / temperature + g) with
    g ~ Gumbel(0, 1), which draws from softmax(logits / temperature). The confidence is the chosen token's
    probability under softmax(logits) in float64, as in Fast-dLLM. The noise comes from `generator`: one generator
    for the whole batch is reproducible, but a row's draw then depends on its place in the batch; a sequence of B
    generators, one per row, keeps every row's sample independent of the rest of the batch.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, L, V], got shape {tuple(logits.shape)}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be non-negative, got {temperature}")
    scores = logits.double()
    if temperature > 0:
        scores = scores / temperature + _gumbel_noise(scores, generator)
    tokens = scores.argmax(dim=-1)
    probabilities = torch.softmax(logits.double(), dim=-1)
    confidence = probabilities.gather(-1, tokens[..., None]).squeeze(-1)
    return tokens, confidence


def _gumbel_noise(like: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
    """Standard Gumbel noise shaped and typed like `like`, from one generator or from one generator per row."""
    if generator is None or isinstance(generator, torch.Generator):
        uniform = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    else:
        if len(generator) != like.shape[0]:
            raise ValueError(f"need one generator per row: {like.shape[0]} rows, {len(generator)} generators")
        uniform = torch.stack(
            [torch.rand(like.shape[1:], generator=g, dtype=like.dtype, device=like.device) for g in generator]
        )
    return -torch.log(-torch.log(uniform))


def _check_candidates(confidence: Tensor, candidates: Tensor) -> None:
    if confidence.ndim != 2 or candidates.shape != confidence.shape or candidates.dtype != torch.bool:
        raise ValueError(
            f"confidence must be [B, L] with a bool candidates mask of the same shape, got "
            f"{tuple(confidence.shape)} and {tuple(candidates.shape)} {candidates.dtype}"
        )


def _ranked_candidates(confidence: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's candidate confidences sorted descending, non-candidates after them as -inf, and every position's
    rank in that order [B, L] (0 = most confident; equal confidences by lower position)."""
    keyed = confidence.masked_fill(~candidates, float("-inf"))
    negated_sorted, order = torch.sort(-keyed, dim=-1, stable=True)
    rank_in_order = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(-1, order, rank_in_order)
    return -negated_sorted, ranks


def commit_top_k(confidence: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """Commit mask [B, L]: the k[b] most confident candidates of row b (all of them when k[b] exceeds their count),
    equal confidences taken by lower position."""
    _check_candidates(confidence, candidates)
    if k.shape != (confidence.shape[0],):
        raise ValueError(f"k must be a [B] count per row, got shape {tuple(k.shape)}")
    if (k < 0).any():
        raise ValueError(f"k must be non-negative, got {k.tolist()}")
    _, ranks = _ranked_candidates(confidence, candidates)
    return candidates & (ranks < k[:, None])


def commit_threshold(confidence: Tensor, candidates: Tensor, threshold: float) -> Tensor:
    """Commit mask [B, L]: Fast-dLLM's threshold rule, every candidate with confidence >= threshold plus each row's
    most confident candidate, so a row with any candidate always advances."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    _check_candidates(confidence, candidates)
    one_per_row = torch.ones(confidence.shape[0], dtype=torch.long, device=confidence.device)
    most_confident = commit_top_k(confidence, candidates, one_per_row)
    return most_confident | (candidates & (confidence >= threshold))


def commit_factor(confidence: Tensor, candidates: Tensor, factor: float) -> Tensor:
    """Commit mask [B, L]: Fast-dLLM's factor rule, the n most confident candidates for the largest n with
    (n + 1) * (1 - c_(n)) <= factor, c_(n) the n-th highest candidate confidence, and at least one.

    The condition is monotone in n (c_(n) does not increase), so the n that meet it are exactly 1..n.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    _check_candidates(confidence, candidates)
    sorted_confidence, ranks = _ranked_candidates(confidence, candidates)
    n = torch.arange(1, confidence.shape[1] + 1, device=confidence.device)
    sorted_is_candidate = n <= candidates.sum(dim=-1, keepdim=True)
    meets = sorted_is_candidate & ((n + 1) * (1 - sorted_confidence) <= factor)
    largest_n = (meets * n).amax(dim=-1)
    count = torch.maximum(largest_n, candidates.any(dim=-1).long())
    return candidates & (ranks < count[:, None])
