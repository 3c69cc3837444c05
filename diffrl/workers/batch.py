"""What travels between roles: sample requests in, rollout batches out."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from diffrl.platform.worker import split_evenly


@dataclass(frozen=True)
class SampleRequest:
    """One sample to generate: its prompt (with GenEval-style metadata), its group (one per prompt), its seed, and
    optionally the sampler's time grid (sigmas from 1 to 0; None: the rollout worker's even grid of
    rollout.num_steps) and MixGRPO's window start."""

    prompt: str
    metadata: dict
    group_id: int
    seed: int
    grid: tuple[float, ...] | None = None
    window_start: int | None = None  # MixGRPO: the first SDE step of this RL step's window (None: the sampler's)


@dataclass
class RolloutBatch:
    """Samples with everything the losses and the report need. Row i of every field is sample i."""

    prompts: list[str]
    metadata: list[dict]
    group_ids: torch.Tensor  # long [N]
    seeds: torch.Tensor  # long [N]
    samples: torch.Tensor  # clean samples x0 in model space, float32 [N, C, H, W]
    images: np.ndarray  # uint8 [N, H, W, 3]
    grid: torch.Tensor  # sampler time grid [S + 1], from 1 to 0
    weight_version: torch.Tensor  # long [N]: the learner weight version that produced each sample
    rewards: torch.Tensor | None = None  # float [N], the weighted total
    reward_details: dict[str, list] = field(default_factory=dict)
    advantages: torch.Tensor | None = None
    # Flow-GRPO only (see sampling.SampleResult): per sample its K stochastic steps.
    latents: torch.Tensor | None = None  # [N, K, C, H, W]
    next_latents: torch.Tensor | None = None  # [N, K, C, H, W]
    log_probs: torch.Tensor | None = None  # [N, K], the rollout policy's log-probs ("old" log-probs)
    step_index: torch.Tensor | None = None  # [N, K] long, sampler step of each stored transition
    nfe: torch.Tensor | None = None  # long [N]: model calls that made each sample (a guided call counts once)

    def __len__(self) -> int:
        return len(self.prompts)

    def split(self, num_shards: int) -> list[RolloutBatch]:
        """Contiguous shards whose sizes differ by at most one (one per learner rank)."""
        return [self.select(rows) for rows in split_evenly(list(range(len(self))), num_shards)]

    def select(self, index: torch.Tensor | list[int]) -> RolloutBatch:
        rows = torch.as_tensor(index, dtype=torch.long)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "grid" or value is None:
                picked[f.name] = value
            elif isinstance(value, torch.Tensor):
                picked[f.name] = value[rows]
            elif isinstance(value, np.ndarray):
                picked[f.name] = value[rows.numpy()]
            elif isinstance(value, dict):
                picked[f.name] = {k: [v[i] for i in rows.tolist()] for k, v in value.items()}
            else:
                picked[f.name] = [value[i] for i in rows.tolist()]
        return replace(self, **picked)

    @staticmethod
    def concat(batches: list[RolloutBatch]) -> RolloutBatch:
        first = batches[0]
        joined = {}
        for f in fields(first):
            values = [getattr(b, f.name) for b in batches]
            if f.name == "grid" and any(not torch.equal(v, values[0]) for v in values[1:]):
                raise ValueError("cannot concat RolloutBatches sampled on different time grids (RolloutBatch.grid)")
            if f.name == "grid" or values[0] is None:
                joined[f.name] = values[0]
            elif isinstance(values[0], torch.Tensor):
                joined[f.name] = torch.cat(values)
            elif isinstance(values[0], np.ndarray):
                joined[f.name] = np.concatenate(values)
            elif isinstance(values[0], dict):
                joined[f.name] = {k: [x for v in values for x in v[k]] for k in values[0]}
            else:
                joined[f.name] = [x for v in values for x in v]
        return RolloutBatch(**joined)
