"""RNG states of a process as plain data (for exact resume), and the seed streams every job derives its draws from."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import torch

# Training sample seeds are drawn from [0, TRAINING_SEEDS); held-out eval seeds are EVAL_SEED_BASE + j, above them,
# so an eval sample never repeats a training sample's noise.
TRAINING_SEEDS = 2**30
EVAL_SEED_BASE = 2**30


class Stream(enum.IntEnum):
    """The random streams derived from a sample's (or a job's) seed: each draw is keyed by (stream, *keys) and hashed
    by NumPy's SeedSequence, so no two streams or keys share a generator (an affine mix such as seed * 7919 + step
    collides once step reaches 7919)."""

    SDE_NOISE = 1  # per-sample noise of sampler step j: (seed, j)
    SDE_WINDOW = 2  # Flow-GRPO-Fast's window start per sample: (seed,)
    TRAINING_ROWS = 3  # AWM / NFT training timesteps and noise: (seed or prompt hash, RL step)
    TRAINED_STEPS = 4  # Flow-GRPO's subset of stored steps: (seed, RL step)
    SOL_SELECTION = 5  # Sol-RL's random selection rule: (job seed, RL step)
    TUNING_SEEDS = 6  # solver_tune's data-driven grid search samples: (job seed, j)
    DLLM_MASKS = 7  # dllm_rl's masks of inner update j: (completion seed, RL step, j)
    DLLM_ROLLOUT = 8  # dllm_rl's completion seeds: (job seed, RL step, prompt, j)


def stream_seed(stream: Stream, *keys: int) -> int:
    """A 63-bit seed for torch.Generator.manual_seed from (stream, *keys) (non-negative integers)."""
    low, high = np.random.SeedSequence([int(stream), *(int(k) for k in keys)]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def stream_generator(stream: Stream, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(stream, *keys))


def capture_rng() -> dict[str, Any]:
    """This process's global RNG states (Python, NumPy, torch CPU and CUDA) as plain data."""
    import random

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], np.asarray(numpy["keys"], dtype=np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
