"""The reward protocol, output validation and the registry of named rewards.

A reward maps a batch of images to one float per image. Every output is validated here, and every error names the
reward, so a broken reward fails the step loudly instead of turning into silent zeros.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np


@dataclass
class RewardOutput:
    """`scores` is the training signal (one float per image); `details` holds named per-image lists for logging."""

    scores: list[float]
    details: dict[str, list] = field(default_factory=dict)

    @staticmethod
    def concat(outputs: Sequence[RewardOutput]) -> RewardOutput:
        """Outputs of consecutive row shards, joined in order."""
        keys = outputs[0].details.keys() if outputs else []
        return RewardOutput(scores=[s for o in outputs for s in o.scores],
                            details={k: [v for o in outputs for v in o.details[k]] for k in keys})


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
    """Build a reward from any of the four plug-in routes; kwargs go to the factory.

    - a registered name (`geneval_shapes`, `ocr`, ...), including rewards that installed packages register through
      the entry-point group `diffrl.rewards` (`name = "pkg.module:factory"` in their pyproject);
    - an import path `pkg.module:factory`;
    - a file `path/to/file.py:factory` (loaded as a module; the path is relative to the working directory);
    - the URL of a reward server, `http://HOST:PORT` (see `diffrl serve-reward`; kwargs: token, timeout_s).
    factory(**kwargs) returns the reward callable. Errors name the reward and list what is registered.
    """
    import diffrl.rewards.builtin  # noqa: F401  (registers the built-in rewards)

    if name.startswith(("http://", "https://")):
        from diffrl.rewards.remote import RemoteReward

        return RemoteReward(name, **kwargs)
    if ":" in name:
        return _load_factory(name)(**kwargs)
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    entry_points = _entry_points()
    if name in entry_points:
        try:
            factory = entry_points[name].load()
        except Exception as err:  # noqa: BLE001 - a broken plug-in must name itself
            raise RewardError(f"reward '{name}': entry point {entry_points[name].value!r} failed to load: {err}") from err
        return factory(**kwargs)
    raise RewardError(f"unknown reward '{name}'; registered rewards: {sorted(_REGISTRY) + sorted(entry_points)} "
                      "(or give pkg.module:factory, path/to/file.py:factory, or a reward server URL)")


def _load_factory(name: str) -> Callable[..., Reward]:
    target, _, attribute = name.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise RewardError(f"reward '{name}': file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"diffrl_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001
            raise RewardError(f"reward '{name}': importing {path} failed: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise RewardError(f"reward '{name}': cannot import module {target!r}: {err}") from err
    if not hasattr(module, attribute):
        raise RewardError(f"reward '{name}': {target!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="diffrl.rewards")}


def known_rewards() -> list[str]:
    import diffrl.rewards.builtin  # noqa: F401

    return sorted(set(_REGISTRY) | set(_entry_points()))
