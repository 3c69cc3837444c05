"""The reward protocol, output validation and the registry of named rewards.

A reward maps a batch of images to one float per image. Every output is validated here, and every error names the
reward, so a broken reward fails the step loudly instead of turning into silent zeros.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np


@dataclass
class RewardOutput:
    """`scores` is the training signal (one float per image); `details` holds named per-image lists for logging."""

    scores: list[float]
    details: dict[str, list] = field(default_factory=dict)


class Reward(Protocol):
    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput: ...


class RewardError(RuntimeError):
    """A reward failed or returned something unusable; the message names the reward."""


def validate_reward_output(name: str, output: object, batch_size: int) -> RewardOutput:
    """Check length, types and finiteness of a reward's output; raise RewardError naming `name` otherwise."""
    if not isinstance(output, RewardOutput):
        raise RewardError(f"reward '{name}' returned {type(output).__name__}, expected RewardOutput")
    if len(output.scores) != batch_size:
        raise RewardError(f"reward '{name}' returned {len(output.scores)} scores for a batch of {batch_size} images")
    for i, score in enumerate(output.scores):
        if isinstance(score, bool) or not isinstance(score, (int, float, np.floating, np.integer)):
            raise RewardError(f"reward '{name}' score {i} has type {type(score).__name__}, expected a float")
        if not math.isfinite(float(score)):
            raise RewardError(f"reward '{name}' score {i} is {score}, expected a finite float")
    for key, values in output.details.items():
        if len(values) != batch_size:
            raise RewardError(f"reward '{name}' detail '{key}' has {len(values)} entries for {batch_size} images")
    return RewardOutput(scores=[float(s) for s in output.scores], details=dict(output.details))


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Register a factory `(**kwargs) -> Reward` under `name` for use in job files."""

    def decorator(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        _REGISTRY[name] = factory
        return factory

    return decorator


def build_reward(name: str, **kwargs) -> Reward:
    """Build a reward from a registered name or an import path `pkg.module:factory` (factory(**kwargs) -> Reward).

    Errors name the reward and list the registered names.
    """
    import diffrl.rewards.builtin  # noqa: F401  (registers the built-in rewards)

    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise RewardError(f"reward '{name}': cannot import {attribute!r} from {module_name!r}: {err}") from err
        return factory(**kwargs)
    if name not in _REGISTRY:
        raise RewardError(f"unknown reward '{name}'; registered rewards: {sorted(_REGISTRY)} "
                          "(or give an import path pkg.module:factory)")
    return _REGISTRY[name](**kwargs)


def known_rewards() -> list[str]:
    import diffrl.rewards.builtin  # noqa: F401

    return sorted(_REGISTRY)
