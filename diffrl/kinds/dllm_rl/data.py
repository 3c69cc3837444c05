"""The dLLM RL job's prompts: training problems per step (a function of (seed, step)) and the held-out ones, each
{"prompt", "reference"} (the reference reaches the rewards as metadata), and the rollout requests of a step:
G completions per prompt, each with its own seed."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffrl.envs import sorting
from diffrl.utils.rng import Stream, stream_seed


def heldout(cfg) -> list[dict[str, Any]]:
    if cfg.data.source == "sorting":
        return sorting.heldout_problems(cfg.data.heldout, cfg.data.length, cfg.data.split_seed)
    from diffrl.kinds.dllm_decode.prompts import read_prompts

    return [{"prompt": r["prompt"], "reference": r["reference"]} for r in read_prompts(cfg.data.eval_file)]


class TaskPrompts:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.heldout = heldout(cfg)
        self.exclude = {p["prompt"] for p in self.heldout}
        if cfg.data.source == "files":
            from diffrl.kinds.dllm_decode.prompts import read_prompts

            self.pool = [{"prompt": r["prompt"], "reference": r["reference"]} for r in read_prompts(cfg.data.train_file)]

    def step_problems(self, step: int) -> list[dict[str, Any]]:
        size = self.cfg.rollout.prompts_per_step
        if self.cfg.data.source == "sorting":
            return sorting.training_problems(step, size, self.cfg.data.length, self.cfg.seed, self.exclude)
        rng = np.random.default_rng([self.cfg.seed, step])
        return [self.pool[i] for i in rng.choice(len(self.pool), size=size, replace=len(self.pool) < size)]


def rollout_requests(problems: list[dict[str, Any]], group_size: int, seed: int, step: int) -> list[dict[str, Any]]:
    """Request i * G + j: completion j of problem i, seeded by (job seed, step, i, j); ids are the row numbers."""
    return [{"id": i * group_size + j, "prompt": p["prompt"], "reference": p.get("reference"), "group": i,
             "seed": stream_seed(Stream.DLLM_ROLLOUT, seed, step, i, j) % (2**31)}
            for i, p in enumerate(problems) for j in range(group_size)]
