"""The RL job's prompts: an embedded world's splits (shapes, scenes) or Flow-GRPO-format prompt files, and the sample requests of a
training step or a held-out eval (each sample with its own seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffrl.algorithms.mixgrpo import window_start
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.utils.rng import TRAINING_SEEDS
from diffrl.workers.batch import SampleRequest

def prompt_splits(cfg: RLJobConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) prompt entries, each a dict with "prompt" and any reward metadata."""
    if cfg.data.source == "files":
        return read_prompt_file(cfg.data.train_file), read_prompt_file(cfg.data.eval_file)
    from diffrl.envs.worlds import world

    if cfg.data.source == "scenes":
        return world("scenes").prompt_splits(heldout_per_tag=cfg.data.heldout_per_tag, seed=cfg.data.split_seed)
    return world("shapes").prompt_splits(heldout_fraction=cfg.data.heldout_fraction, seed=cfg.data.split_seed)


def read_prompt_file(path: str) -> list[dict]:
    """Flow-GRPO's prompt files: .txt has one prompt per line (OCR, PickScore); .jsonl has one GenEval metadata
    object per line with its "prompt" (and tag, include, exclude). Errors name the file and line."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            entry = prompt_line(line, f"{path}:{number}")
        else:
            entry = {"prompt": line.strip()}
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path}: no prompts")
    return entries


def prompt_line(line: str, where: str) -> dict:
    """One JSON-lines entry with a string "prompt"; errors start with `where` (file:line)."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON: {err}") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        raise ValueError(f"{where}: each line must be an object with a string 'prompt'")
    return entry


def step_requests(prompts: list[dict], cfg: RLJobConfig, step: int, group_size: int | None = None) -> list[SampleRequest]:
    """The step's prompts (deterministic in (seed, step)) times `group_size` (default rollout.group_size) samples,
    each with its own seed. Sol-RL asks for its whole candidate pool this way."""
    size = group_size or cfg.rollout.group_size
    rng = np.random.default_rng([cfg.seed, step])
    k = cfg.rollout.prompts_per_step
    chosen = rng.choice(len(prompts), size=k, replace=k > len(prompts))
    seeds = rng.integers(0, TRAINING_SEEDS, size=k * size)
    start = None
    if cfg.learner.algorithm == "mixgrpo":  # MixGRPO's window slides with the RL step, the same for every sample
        section = cfg.learner.mixgrpo
        start = window_start(step, section.shift_every, section.stride,
                             cfg.rollout.num_steps - 1 - cfg.rollout.sde_window, section.roll_back)
    return [
        SampleRequest(prompts[p]["prompt"], prompts[p], group, int(seeds[group * size + j]), window_start=start)
        for group, p in enumerate(chosen)
        for j in range(size)
    ]
