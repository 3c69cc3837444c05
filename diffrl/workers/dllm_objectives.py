"""Learner objectives of the masked-diffusion LMs (`diffrl.algorithms.masked_diffusion`), registered in the
learner's objective registry. Rows are token sequences [prompt | answer] with a per-row generator seeded by the
row's seed, so N learner ranks compute the update one rank would.

- `masked_diffusion` (LLaDA): mask the answer with one t per row; the bidirectional model predicts the masks.
- `block_diffusion` (Fast-dLLM v2 / BD3-LM): one t per answer block; the block-causal model sees [prompt | noisy
  answer | clean answer] under the block-diffusion mask and predicts each noisy block from the clean blocks before
  it (with token shift when the model has it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from diffrl.algorithms.masked_diffusion import BlockDiffusionLayout, mask_answers, masked_diffusion_loss
from diffrl.platform.worker import split_evenly
from diffrl.workers.objective_base import Models, Objective


@dataclass
class TokenBatch:
    """Rows of token ids [N, S] whose answers start at slot `answer_start`, with each row's seed."""

    tokens: Tensor
    answer_start: int
    seeds: Tensor

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, rows: list[int]) -> TokenBatch:
        index = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, tokens=self.tokens[index], seeds=self.seeds[index])

    def split(self, num_shards: int) -> list[TokenBatch]:
        return [self.select(rows) for rows in split_evenly(list(range(len(self))), num_shards)]


class MaskedDiffusionObjective(Objective):
    """LLaDA's masked-diffusion loss; the "eval" EMA shadow is evaluated and saved (as in pretraining)."""

    needs_reference = False
    advantages = None
    trains = "model"
    conditioning = False
    blockwise: ClassVar[bool] = False

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        start, decay = cfg["ema_start"], cfg["ema_decay"]
        self.shadows = {"eval": lambda step: decay if step > start else 0.0}
        self.block_length = cfg.get("block_length", 0) if self.blockwise else 0
        if self.blockwise and self.block_length < 1:
            raise ValueError("learner.algorithm=block_diffusion needs the model's block length")

    def rows(self, batch: TokenBatch, step: int) -> dict[str, Tensor]:
        generators = [torch.Generator().manual_seed(int(seed) ^ (step << 20)) for seed in batch.seeds.tolist()]
        masked, probability = mask_answers(batch.tokens, batch.answer_start, generators, self.block_length)
        return {"index": torch.arange(len(batch)), "tokens": batch.tokens, "masked": masked,
                "probability": probability, "answer_start": torch.full((len(batch),), batch.answer_start)}

    def loss(self, models: Models, rows: dict[str, Tensor], cond=None) -> tuple[Tensor, dict[str, Tensor]]:
        lm = models.trained()
        tokens, masked = rows["tokens"], rows["masked"]
        start = int(rows["answer_start"][0])
        noisy = torch.where(masked, lm.config.mask_token_id, tokens)
        logits = self.predict(lm, noisy, tokens, start)
        answer = tokens.shape[1] - start
        loss = masked_diffusion_loss(logits, tokens[:, start:], masked[:, start:], rows["probability"][:, start:],
                                     answer)
        with torch.no_grad():
            hit = (logits.argmax(-1) == tokens[:, start:])[masked[:, start:]].float().mean()
        return loss, {"masked_accuracy": hit}

    def predict(self, lm, noisy: Tensor, clean: Tensor, start: int) -> Tensor:
        """Logits predicting the answer slots [N, answer, V] (bidirectional attention over the noisy rows)."""
        n, length = noisy.shape
        positions = torch.arange(length, device=noisy.device).expand(n, -1)
        attend = torch.ones(n, length, length, dtype=torch.bool, device=noisy.device)
        out = lm(noisy, positions, attend)
        if lm.config.shift_logits:
            return out[:, start - 1:-1]
        return out[:, start:]


class BlockDiffusionObjective(MaskedDiffusionObjective):
    blockwise = True

    def predict(self, lm, noisy: Tensor, clean: Tensor, start: int) -> Tensor:
        n, length = noisy.shape
        layout = BlockDiffusionLayout.build(start, length - start, self.block_length, lm.config.shift_logits)
        device = noisy.device
        inputs = torch.cat([noisy, clean[:, start:]], dim=1)
        out = lm(inputs, layout.positions.to(device).expand(n, -1), layout.attend.to(device).expand(n, -1, -1))
        return out[:, layout.predict_from.to(device)]
