"""Training losses of masked-diffusion LMs.

- LLaDA (Nie et al., arXiv 2502.09992; ML-GSAI/LLaDA's SFT recipe): draw t ~ U(0, 1) per sequence, mask each
  answer token with probability p = (1 - eps) t + eps, and minimize the cross-entropy of the masked tokens weighted
  by 1 / p, summed and divided by the answer length (an upper bound on the answer's negative log-likelihood).
- Block diffusion (Arriola et al., BD3-LM, arXiv 2503.09573; the training of Fast-dLLM v2, arXiv 2509.26328): each
  answer block is masked with its own t, and a block's noisy tokens are predicted from the clean blocks before it.
  One forward covers every block by concatenating the noisy answer and the clean answer: a noisy block attends to
  the prompt, the clean blocks before it and itself; a clean block to the prompt, the clean blocks up to itself —
  exactly what a block-causal decoder sees. With token shift (models started from autoregressive weights) a noisy
  token is predicted from the output one slot earlier: the previous noisy token in its block, or for a block's
  first token, the last clean token before the block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_MASK_PROBABILITY = 1e-3


def mask_answers(tokens: Tensor, answer_start: int, generators: Sequence[torch.Generator],
                 block_length: int = 0) -> tuple[Tensor, Tensor]:
    """(masked bool, mask probability per token) for rows [N, S] whose answers start at
    `answer_start`: each row (or with block_length > 0, each answer block of a row) draws its own t from its
    generator, so a row never depends on the rest of its batch."""
    n, length = tokens.shape
    answer = length - answer_start
    units = answer // block_length if block_length else 1
    span = block_length or answer
    probability = torch.zeros(n, length, dtype=torch.float64)
    draws = torch.zeros(n, length)
    for row, gen in enumerate(generators):
        t = torch.rand(units, generator=gen, dtype=torch.float64)
        probability[row, answer_start:] = ((1 - MIN_MASK_PROBABILITY) * t + MIN_MASK_PROBABILITY).repeat_interleave(span)
        draws[row, answer_start:] = torch.rand(answer, generator=gen)
    masked = draws < probability
    masked[:, :answer_start] = False
    return masked, probability


def masked_diffusion_loss(logits: Tensor, targets: Tensor, masked: Tensor, probability: Tensor,
                          answer_length: int) -> Tensor:
    """sum over masked tokens of CE / p, divided by (rows * answer_length)."""
    ce = F.cross_entropy(logits[masked].float(), targets[masked], reduction="none")
    return (ce / probability[masked].to(ce.dtype)).sum() / (targets.shape[0] * answer_length)


@dataclass(frozen=True)
class BlockDiffusionLayout:
    """The concatenated sequence [prompt | noisy answer | clean answer] of block-diffusion training: slot
    positions (RoPE), the allowed keys of each query (bool [L, L]) and, for each noisy answer slot, the slot whose
    output predicts it (`predict_from`, [answer])."""

    positions: Tensor
    attend: Tensor
    predict_from: Tensor

    @classmethod
    def build(cls, prompt_length: int, answer_length: int, block_length: int, shift: bool) -> BlockDiffusionLayout:
        if answer_length % block_length:
            raise ValueError(f"block_length={block_length} must divide the answer length {answer_length}")
        p, a = prompt_length, answer_length
        answer_pos = torch.arange(p, p + a)
        positions = torch.cat([torch.arange(p), answer_pos, answer_pos])
        block = torch.arange(a) // block_length
        # kind: 0 prompt, 1 noisy answer, 2 clean answer; blk: the answer block (-1 for the prompt)
        kind = torch.cat([torch.zeros(p, dtype=torch.long), torch.ones(a, dtype=torch.long), torch.full((a,), 2)])
        blk = torch.cat([torch.full((p,), -1), block, block])
        q_kind, k_kind, q_blk, k_blk = kind[:, None], kind[None, :], blk[:, None], blk[None, :]
        attend = (k_kind == 0) | (
            (q_kind == 1) & (((k_kind == 1) & (k_blk == q_blk)) | ((k_kind == 2) & (k_blk < q_blk)))) | (
            (q_kind == 2) & (k_kind == 2) & (k_blk <= q_blk))
        attend = attend & ~((q_kind == 0) & (k_kind != 0))
        noisy = torch.arange(p, p + a)
        if shift:
            clean_before = torch.where(answer_pos - 1 < p, answer_pos - 1, answer_pos - 1 + a)  # last clean slot
            predict_from = torch.where(torch.arange(a) % block_length == 0, clean_before, noisy - 1)
        else:
            predict_from = noisy
        return cls(positions, attend, predict_from)
