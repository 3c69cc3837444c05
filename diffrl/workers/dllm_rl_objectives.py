"""Learner objectives of RL for masked-diffusion LMs (`kind: dllm_rl`; the math is `diffrl.algorithms.dllm_rl`):

- `diffu_grpo` (d1), with `mask: coupled` DiffuCoder's coupled-GRPO;
- `wd1`, the ratio-free weighted likelihood.

Rows are completions: [left-padded prompt | completion] token ids with the layout the decoder used, the group
advantages and the row's seed. Each objective replays the rollout batch `mu` times (`passes`: one optimizer step
each, as d1's `num_iterations`); pass j draws its masks from (row seed, RL step, j), so the old, reference and
current log-probabilities of pass j see the same masked inputs, and a row's masks never depend on how the batch was
split over ranks. The old policy's log-probabilities of every pass are computed in pass 0 (before any update), the
reference's from a frozen copy of the starting weights; in pass 0 the old log-probabilities are the current ones
detached, so the ratio is exactly 1 there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from diffrl.algorithms.dllm_rl import (coupled_logprobs, coupled_masks, diffu_grpo_loss, prompt_masks,
                                       token_logprobs, wd1_loss)
from diffrl.models.dllm.adapter import Layout
from diffrl.utils.rng import Stream, stream_generator
from diffrl.workers.objective_base import Models, Objective


@dataclass
class CompletionBatch:
    """Completions of one RL step: tokens [N, prompt_end + gen] (prompts left-padded by `pad` [N] slots), which
    completion tokens count (`completion_mask` [N, gen]: up to and including the first end-of-text), advantages
    [N], group ids [N] (one group per prompt) and seeds [N]. Groups stay whole when split over ranks."""

    tokens: Tensor
    pad: Tensor
    prompt_end: int
    completion_mask: Tensor
    advantages: Tensor
    group_ids: Tensor
    seeds: Tensor
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, rows: list[int]) -> CompletionBatch:
        index = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, tokens=self.tokens[index], pad=self.pad[index],
                       completion_mask=self.completion_mask[index], advantages=self.advantages[index],
                       group_ids=self.group_ids[index], seeds=self.seeds[index],
                       prompts=[self.prompts[i] for i in rows])

    def split(self, num_shards: int) -> list[CompletionBatch]:
        """Whole groups per shard, in order (the controller checks that the groups divide evenly)."""
        groups = torch.unique_consecutive(self.group_ids)
        if len(groups) % num_shards:
            raise ValueError(f"{len(groups)} groups do not split evenly over {num_shards} learner ranks")
        per = len(groups) // num_shards
        out = []
        for shard in range(num_shards):
            wanted = set(groups[shard * per:(shard + 1) * per].tolist())
            out.append(self.select([i for i, g in enumerate(self.group_ids.tolist()) if g in wanted]))
        return out


def completion_logprobs(lm, tokens: Tensor, masked: Tensor, pad: Tensor, prompt_end: int) -> Tensor:
    """log pi(o_k | the masked sequence) [n, gen] for one forward of `lm` on tokens with `masked` slots replaced by
    the mask token (padding is never attended; the model's own attention pattern and logit shift apply)."""
    noisy = torch.where(masked, lm.config.mask_token_id, tokens)
    n, total = tokens.shape
    layout = Layout(pad, prompt_end, total)
    rows = torch.arange(n, device=tokens.device)
    logits = lm.window_logits(noisy, layout, rows, torch.zeros(n, dtype=torch.long, device=tokens.device), total,
                              None)
    return token_logprobs(logits[:, prompt_end:], tokens[:, prompt_end:])


class DllmRLObjective(Objective):
    """Shared: rows, masks per pass, the old / reference log-probabilities filled in pass 0."""

    needs_reference = False  # the reference is the frozen "reference" shadow (decay 1: the starting weights)
    advantages = None  # the controller computes the group advantages
    trains = "model"
    conditioning = False
    coupled = False
    uses_old = True

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        self.cfg = cfg
        self.passes = cfg["mu"]
        self.beta = cfg.get("beta", 0.0)
        self.shadows = {"reference": lambda step: 1.0} if self.beta > 0 else {}
        self.current_pass = 0
        self.step = 0

    def start_pass(self, index: int) -> None:
        self.current_pass = index

    def rows(self, batch: CompletionBatch, step: int) -> dict[str, Tensor]:
        self.step = step
        n, gen = batch.completion_mask.shape
        return {"index": torch.arange(n), "tokens": batch.tokens, "pad": batch.pad,
                "prompt_end": torch.full((n,), batch.prompt_end), "completion_mask": batch.completion_mask,
                "advantages": batch.advantages.float(), "group_ids": batch.group_ids, "seeds": batch.seeds,
                "old": torch.zeros(n, self.passes, gen), "ref": torch.zeros(n, self.passes, gen)}

    def masks(self, rows: dict[str, Tensor], index: int) -> list[tuple[Tensor, ...]]:
        """The masked slots of pass `index` per forward: d1's one mask, or the coupled passes (full, first,
        second) with each row's t."""
        tokens, start = rows["tokens"], int(rows["prompt_end"][0])
        gens = [stream_generator(Stream.DLLM_MASKS, int(seed), self.step, index) for seed in rows["seeds"].tolist()]
        length = tokens.shape[1]
        if self.coupled:
            first, second, t = coupled_masks(start, length, gens, self.cfg["coupled_low"], self.cfg["coupled_high"])
            full = torch.zeros_like(first)
            full[:, start:] = True
            return [(full,), (first, second, t)]
        masked = prompt_masks(start, length, self.cfg["p_mask_prompt"], gens)
        slots = torch.arange(length)[None]
        return [(masked & (slots >= rows["pad"][:, None]),)]  # padding stays padding

    def logprobs(self, lm, rows: dict[str, Tensor], index: int) -> Tensor:
        tokens, pad, start = rows["tokens"], rows["pad"], int(rows["prompt_end"][0])
        masks = self.masks(rows, index)
        if not self.coupled:
            return completion_logprobs(lm, tokens, masks[0][0].to(tokens.device), pad, start)
        (full,), (first, second, t) = masks
        lp = [completion_logprobs(lm, tokens, m.to(tokens.device), pad, start) for m in (full, first, second)]
        return coupled_logprobs(lp[0], lp[1], lp[2], first[:, start:].to(tokens.device), t.to(tokens.device))

    def prepare(self, models: Models, rows: dict[str, Tensor], current: Tensor) -> None:
        """Pass 0: the old policy's log-probabilities of every pass (pass 0's: `current`, detached) and the
        reference's, written into the rows' buffers (views of the whole minibatch's)."""
        with torch.no_grad():
            rows["old"][:, 0] = current.detach()
            if self.uses_old:
                for index in range(1, self.passes):
                    rows["old"][:, index] = self.logprobs(models.trained(), rows, index)
            if self.beta > 0:
                reference = models.shadow_module("reference")
                for index in range(self.passes):
                    rows["ref"][:, index] = self.logprobs(reference, rows, index)


class DiffuGRPOObjective(DllmRLObjective):
    """d1's diffu-GRPO (`mask: prompt`) or DiffuCoder's coupled-GRPO (`mask: coupled`)."""

    section = "diffu_grpo"

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        super().__init__(cfg, rollout_cfg)
        self.coupled = cfg["mask"] == "coupled"

    def loss(self, models: Models, rows: dict[str, Tensor], cond=None) -> tuple[Tensor, dict[str, Tensor]]:
        index = self.current_pass
        logp = self.logprobs(models.trained(), rows, index)
        if index == 0:
            self.prepare(models, rows, logp)
        ref = rows["ref"][:, index] if self.beta > 0 else None
        return diffu_grpo_loss(logp, rows["old"][:, index], ref, rows["advantages"], rows["completion_mask"],
                               self.cfg["eps"], self.beta)


class WD1Objective(DllmRLObjective):
    """wd1: the weighted log-likelihood of the completions, d1's one-step estimator, no old policy."""

    section = "wd1"
    uses_old = False

    def loss(self, models: Models, rows: dict[str, Tensor], cond=None) -> tuple[Tensor, dict[str, Tensor]]:
        logp = self.logprobs(models.trained(), rows, self.current_pass)
        return wd1_loss(logp, rows["advantages"], rows["group_ids"], rows["completion_mask"])
