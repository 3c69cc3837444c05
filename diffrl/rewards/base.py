"""The reward protocol, output validation and the registry of named rewards.

A reward maps a batch of images to one float per image. Every output is validated here, and every error names the
reward, so a broken reward fails the step loudly instead of turning into silent zeros.

Users write rewards in either of two forms, on every route (registered name, entry point, import path, file):
- a reward function `f(images, prompts, metadata)`: its first three parameters are positional and have no
  defaults; it is used as it is and takes no `kwargs`;
- a factory `make(**kwargs) -> reward` (a function or a class): anything else; the job's `kwargs` are its arguments.
A reward may return a RewardOutput, a `(scores, details)` tuple (Flow-GRPO's convention), or the scores alone as a
list, numpy array or torch tensor (one number per image).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import urllib.parse
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


class RewardOutputError(RewardError):
    """A reward returned something of the wrong type or shape: a bug in the reward, not a transient failure, so it
    is not retried."""


def _as_scores(name: str, scores: object) -> list:
    if hasattr(scores, "detach") and hasattr(scores, "cpu"):  # a torch tensor, without importing torch
        scores = scores.detach().cpu().double().numpy()  # (numpy has no bfloat16)
    if isinstance(scores, np.ndarray):
        if scores.ndim != 1:
            raise RewardOutputError(f"reward '{name}' returned scores of shape {list(scores.shape)}, expected one "
                                    f"number per image")
        return scores.tolist()
    if isinstance(scores, (list, tuple)):  # 0-d tensors and numpy scalars become floats
        return [s.item() if getattr(s, "ndim", None) == 0 and hasattr(s, "item") else s for s in scores]
    raise RewardOutputError(f"reward '{name}' returned {type(scores).__name__}, expected a RewardOutput, a "
                            f"(scores, details) tuple, or scores as a list, numpy array or tensor")


def as_reward_output(name: str, output: object) -> RewardOutput:
    """A reward's return value in any accepted form as a RewardOutput (not yet checked against the batch)."""
    if isinstance(output, RewardOutput):
        return output
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict):
        details = {str(key): value if isinstance(value, list) else _as_scores(name, value)
                   for key, value in output[1].items()}
        return RewardOutput(scores=_as_scores(name, output[0]), details=details)
    return RewardOutput(scores=_as_scores(name, output))


def validate_reward_output(name: str, output: object, batch_size: int) -> RewardOutput:
    """Accept any of the reward return forms, then check length, types and finiteness; raise RewardOutputError
    naming `name` for a wrong type or length, RewardError for a non-finite score."""
    output = as_reward_output(name, output)
    if len(output.scores) != batch_size:
        raise RewardOutputError(f"reward '{name}' returned {len(output.scores)} scores for a batch of {batch_size} "
                                f"images")
    for i, score in enumerate(output.scores):
        if isinstance(score, bool) or not isinstance(score, (int, float, np.floating, np.integer)):
            raise RewardOutputError(f"reward '{name}' score {i} has type {type(score).__name__}, expected a float")
        if not math.isfinite(float(score)):
            raise RewardError(f"reward '{name}' score {i} is {score}, expected a finite float")
    for key, values in output.details.items():
        if len(values) != batch_size:
            raise RewardOutputError(f"reward '{name}' detail '{key}' has {len(values)} entries for {batch_size} "
                                    f"images")
    return RewardOutput(scores=[float(s) for s in output.scores], details=dict(output.details))


_REGISTRY: dict[str, Callable[..., Reward]] = {}
# {registered name: check(entry) -> problem or None}: what a reward needs in each prompt's metadata.
_PROMPT_CHECKS: dict[str, Callable[[dict], str | None]] = {}
# {registered name: the kwargs that name local model directories}
_PATH_KWARGS: dict[str, tuple[str, ...]] = {}
# {registered name: (detail, label)}: the detail a held-out eval reports as its headline, e.g. ("strict", "GenEval")
_HEADLINES: dict[str, tuple[str, str]] = {}


def register_reward(name: str, prompt_check: Callable[[dict], str | None] | None = None,
                    paths: tuple[str, ...] = (), headline: tuple[str, str] | None = None,
                    ) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Register a factory `(**kwargs) -> Reward` (or a reward function) under `name` for use in job files.
    `prompt_check(entry)` says what is wrong with one prompt entry for this reward (None when nothing): `--check`
    runs it over the job's prompts before any work starts. `paths`: the kwargs that name local model directories,
    which `--check` requires to exist. `headline`: (detail, label), the detail a job's held-out eval reports by
    default when this is the job's first reward that declares one (see `resolve_headline`)."""

    def decorator(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        _REGISTRY[name] = factory
        if prompt_check is not None:
            _PROMPT_CHECKS[name] = prompt_check
        if paths:
            _PATH_KWARGS[name] = tuple(paths)
        if headline is not None:
            _HEADLINES[name] = headline
        return factory

    return decorator


def is_reward_function(obj: Callable) -> bool:
    """True for a reward function `(images, prompts, metadata)`: its first three parameters are positional and
    required. A factory (including a class, whose signature is its __init__'s) is anything else."""
    if inspect.isclass(obj):
        return False
    try:
        parameters = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return len(parameters) >= 3 and all(p.kind in positional and p.default is p.empty for p in parameters[:3])


def check_url(name: str) -> None:
    parts = urllib.parse.urlsplit(name)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.query or parts.fragment:
        raise RewardError(f"reward '{name}': not a reward server URL (http[s]://HOST[:PORT][/path])")


def resolve_reward(name: str) -> Callable | None:
    """The factory or reward function behind `name` without calling it (None for a reward server URL, whose syntax
    is checked). Imports the module or file of an import-path or file reward; errors name the reward."""
    import diffrl.rewards.builtin  # noqa: F401  (registers the built-in rewards)

    if name.startswith(("http://", "https://")):
        check_url(name)
        return None
    if ":" in name:
        return _load_factory(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    entry_points = _entry_points()
    if name in entry_points:
        try:
            return entry_points[name].load()
        except Exception as err:  # noqa: BLE001 - a broken plug-in must name itself
            raise RewardError(f"reward '{name}': entry point {entry_points[name].value!r} failed to load: "
                              f"{err}") from err
    raise RewardError(f"unknown reward '{name}'; registered rewards: {sorted(_REGISTRY) + sorted(entry_points)} "
                      "(or give pkg.module:factory, path/to/file.py:factory, or a reward server URL)")


def check_reward(name: str, kwargs: dict) -> Callable | None:
    """Resolve `name` and check that `kwargs` fit it (a factory's signature; none for a reward function) without
    building anything; returns what resolve_reward returns. Raises RewardError naming the reward."""
    target = resolve_reward(name)
    if target is None:
        if "token" in kwargs:
            raise RewardError(f"reward '{name}': kwargs.token would store a secret in the job file (it is copied "
                              f"into the run directory and shipped with cluster jobs); set DIFFRL_REWARD_TOKEN or "
                              f"kwargs.token_file instead")
        unknown = sorted(set(kwargs) - {"token_file", "timeout_s", "image_format"})
        if unknown:
            raise RewardError(f"reward '{name}': a reward server URL takes kwargs token_file, timeout_s and "
                              f"image_format, got {unknown}")
        return None
    if is_reward_function(target):
        if kwargs:
            raise RewardError(f"reward '{name}' is a reward function (images, prompts, metadata), which takes no "
                              f"kwargs; got {sorted(kwargs)} (write a factory (**kwargs) -> reward to configure it)")
        return target
    try:
        inspect.signature(target).bind(**kwargs)
    except TypeError as err:
        raise RewardError(f"reward '{name}': its kwargs do not fit the factory {_describe(target)}: {err}") from None
    except ValueError:
        pass  # no signature to check (a builtin); the call will tell
    return target


def _describe(target: Callable) -> str:
    try:
        return f"{getattr(target, '__name__', type(target).__name__)}{inspect.signature(target)}"
    except (TypeError, ValueError):
        return repr(target)


def build_reward(name: str, **kwargs) -> Reward:
    """Build a reward from any of the four plug-in routes; kwargs go to the factory.

    - a registered name (`geneval_shapes`, `ocr`, ...), including rewards that installed packages register through
      the entry-point group `diffrl.rewards` (`name = "pkg.module:factory"` in their pyproject);
    - an import path `pkg.module:factory`;
    - a file `path/to/file.py:factory` (loaded as a module; the path is relative to the working directory);
    - the URL of a reward server, `http://HOST:PORT` (see `diffrl serve-reward`; kwargs: token_file, timeout_s).
    A reward function is used as it is; a factory is called with kwargs. Errors name the reward (a factory that
    raises, e.g. on a wrong argument, is a RewardError naming it) and list what is registered.
    """
    target = check_reward(name, kwargs)
    if target is None:
        from diffrl.rewards.remote import RemoteReward

        return RemoteReward(name, **kwargs)
    if is_reward_function(target):
        return target
    try:
        return target(**kwargs)
    except RewardError:
        raise
    except Exception as err:  # noqa: BLE001 - a failing factory must name its reward
        raise RewardError(f"reward '{name}': building it failed: {type(err).__name__}: {err}") from err


def path_problems(name: str, kwargs: dict) -> list[str]:
    """The model directories in a registered reward's kwargs that do not exist here (`builtin:NAME`: a checkpoint the
    package ships, diffrl.models.shipped)."""
    from diffrl.models.shipped import missing_hint, shipped_directory

    return [f"kwargs.{key}: {kwargs[key]!r} is not a local directory (nothing is downloaded at run time)"
            f"{missing_hint(kwargs[key])}"
            for key in _PATH_KWARGS.get(name, ()) if kwargs.get(key) and not shipped_directory(kwargs[key]).is_dir()]


def prompt_problems(name: str, entries: Sequence[dict]) -> list[str]:
    """What reward `name` finds wrong with the prompt entries (its registered prompt_check): one line with the count
    and the first offending prompt, or nothing."""
    check = _PROMPT_CHECKS.get(name)
    if check is None:
        return []
    bad = [(index, entry, problem) for index, entry in enumerate(entries) if (problem := check(entry))]
    if not bad:
        return []
    index, entry, problem = bad[0]
    return [f"{len(bad)} of {len(entries)} prompts lack what it needs, first prompt {index} "
            f"({entry.get('prompt', '')!r:.60}): {problem}"]


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
        except Exception as err:  # noqa: BLE001 - a module that fails while importing must name its reward
            raise RewardError(f"reward '{name}': importing {target!r} failed: {type(err).__name__}: {err}") from err
    if not hasattr(module, attribute):
        raise RewardError(f"reward '{name}': {target!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="diffrl.rewards")}


def registered_in_process(name: str) -> bool:
    """Whether `name` is registered by diffrl itself or by code imported here (not by an installed entry point)."""
    import diffrl.rewards.builtin  # noqa: F401

    return name in _REGISTRY


def entry_point_distribution(name: str) -> str | None:
    """The installed distribution whose entry point registers reward `name` (None when no entry point does)."""
    entry = _entry_points().get(name)
    if entry is None:
        return None
    return getattr(getattr(entry, "dist", None), "name", None) or entry.value.partition(".")[0]


def resolve_headline(metric: str | None, label: str | None, names: Sequence[str]) -> tuple[str, str]:
    """The held-out headline (`trainer.eval_metric`, `trainer.eval_label`) of a job whose rewards are `names`.

    Unset, the metric is the headline detail of the first reward that declares one (geneval_shapes: its strict
    score), else `reward`: the job's weighted reward. A set metric must be `reward`, a reward's name (its score) or
    NAME/DETAIL of one of the job's rewards; anything else is a ValueError naming trainer.eval_metric, so `--check`
    refuses it before any work starts. The label defaults to the declared label, else the metric."""
    import diffrl.rewards.builtin  # noqa: F401  (registers the built-in rewards and their headlines)

    if metric is None:
        declared = next(((n, _HEADLINES[n]) for n in names if n in _HEADLINES), None)
        if declared is not None:
            name, (detail, default_label) = declared
            return f"{name}/{detail}", label or default_label
        return "reward", label or ("reward" if len(names) > 1 else f"reward ({names[0]})")
    if metric != "reward" and not any(metric == n or metric.startswith(f"{n}/") for n in names):
        raise ValueError(f"trainer.eval_metric: {metric!r} is not produced by the job's rewards {list(names)}; give "
                         f"'reward' (the weighted job reward), a reward's name or NAME/DETAIL, or leave it unset")
    if label is None:
        name = next((n for n in names if metric.startswith(f"{n}/")), None)
        declared = _HEADLINES.get(name) if name else None
        label = declared[1] if declared and metric == f"{name}/{declared[0]}" else metric
    return metric, label


def known_rewards() -> list[str]:
    import diffrl.rewards.builtin  # noqa: F401

    return sorted(set(_REGISTRY) | set(_entry_points()))
