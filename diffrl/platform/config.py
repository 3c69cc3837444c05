"""Typed job files: pydantic models per role, YAML loading, dotted command-line overrides.

A job file is the single source of truth for a run. It is validated completely before any work starts; every error
names the key path and what is allowed, and the CLI turns it into exit code 2 with nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import math

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError


class ConfigError(ValueError):
    """A job file or override is invalid. The message names the key path (or file) and what is allowed."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, floats must be finite, values are checked on assignment
    too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster to join (or RAY_ADDRESS); None starts a local one")
    num_cpus: int = Field(8, ge=1, description="logical CPUs of a local cluster (a scheduling budget, not cores)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a local cluster; None detects them")
    placement_timeout_s: float = Field(120.0, gt=0, description="seconds a role's resource pool may wait to be placed")
    colocate: list[list[str]] = Field(
        default_factory=list, description="groups of roles sharing one resource pool, worker i of each on bundle i "
        "(the job kind's role names, e.g. rollout, learner, reward0), e.g. [[rollout, learner]] with fractional GPUs",
    )


Resources = dict[str, float]
RESOURCES_HELP = "custom Ray resources per worker, e.g. {node_a: 1} to land on the nodes that advertise node_a"


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline writes runs/NAME/wandb (sync later with `wandb sync`); online needs a login"
    )
    project: str = "diffrl"
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)


class TrainerBase(Section):
    """The run cadence every job kind shares: how many steps, and how often to evaluate, checkpoint and report."""

    steps: int = Field(50, ge=0)
    eval_every: int = Field(0, ge=0, description="held-out eval every N steps (0: only before and after)")
    checkpoint_every: int = Field(0, ge=0, description="full checkpoint (exact resume) every N steps; 0: none")
    keep_checkpoints: int = Field(3, ge=0, description="newest checkpoints kept on disk (0 keeps all)")
    max_learner_failures: int = Field(
        3, ge=0, description="with resume: auto, a dead worker of a role that is never restarted in place (a learner "
        "rank) restarts the roles from the newest checkpoint at most this often per run",
    )
    report_every: int = Field(25, ge=0, description="rebuild report.html every N steps (and after every eval); 0: "
                                                    "only at evals and the end")
    wandb: WandbConfig = WandbConfig()


# Keys of the base config a resumed run may change: cadence, logging and the cluster. A kind adds its own.
BASE_RESUMABLE = (
    "resume", "output_dir", "ray.", "trainer.steps", "trainer.eval_every", "trainer.checkpoint_every",
    "trainer.keep_checkpoints", "trainer.max_learner_failures", "trainer.report_every", "trainer.wandb.",
)


class JobConfig(Section):
    """What every job kind's config extends: identity, seed, where runs go, backend, resume policy, Ray and the run
    cadence (`trainer`). `RESUMABLE` lists the dotted keys (or prefixes; '*' for a list index) that a resumed run may
    change; a kind extends BASE_RESUMABLE with its own."""

    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE
    # The input paths a job names (see resolve_input_paths; a kind adds its own): relative ones resolve against the
    # job file's directory (command-line overrides: the current directory); output_dir stays relative to the
    # current directory.
    INPUT_PATHS: ClassVar[dict[str, str]] = {}

    kind: str
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    output_dir: str = "runs"
    backend: Literal["ray", "local"] = Field("ray", description="local runs every worker in-process (debugging)")
    resume: Literal["never", "auto"] = Field(
        "never", description="auto: continue runs/NAME from its newest complete checkpoint when there is one (and "
        "restart from it when a learner dies); never: a new run directory every time",
    )
    ray: RayConfig = RayConfig()
    trainer: TrainerBase = TrainerBase()
    # One-line notes on values the validators derived for the user (e.g. training timesteps that follow a
    # schedule); `diffrl run` and `diffrl submit` print them.
    _notices: list[str] = PrivateAttr(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def notices(self) -> list[str]:
        return list(self._notices)


# Where each key of a job came from: {key path: "file:line" or "override 'a.b=c'"}; paths hold list indices as ints.
Origins = dict[tuple, str]


def origin_of(origins: Origins | None, loc: tuple) -> str:
    """" (at file:line)" or " (from override 'k=v')" for the longest prefix of `loc` that has an origin, else ""."""
    for end in range(len(loc), 0, -1):
        if origins and loc[:end] in origins:
            where = origins[loc[:end]]
            return f" ({'from' if where.startswith('override') else 'at'} {where})"
    return ""


def problem_lines(problems: list[str], origins: Origins | None) -> list[str]:
    """"key.path: message" problems as indented lines, each with where its key came from."""
    lines = []
    for problem in problems:
        key = problem.partition(":")[0]
        path = tuple(int(part) if part.isdigit() else part for part in key.split("."))
        lines.append(f"  {problem}{origin_of(origins, path)}")
    return lines


def format_validation_error(err: ValidationError, source: str, origins: Origins | None = None) -> str:
    lines = [f"invalid job config ({source}):"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "literal_error":
            message = f"got {item.get('input')!r}; {message}"
        elif item["type"] == "finite_number":
            message = f"got {item.get('input')!r}; {message}"
        elif item["type"] == "value_error":
            message = message.removeprefix("Value error, ")
            # A section's or the job's own check names the key it is about ("trainer.eval_metric: ..."): report it
            # at that key (and where that key came from).
            key, sep, rest = message.partition(": ")
            if sep and " " not in key and "." in key and (not item["loc"] or key.startswith(f"{path}.")):
                loc = tuple(int(p) if p.isdigit() else p for p in key.split("."))
                path, message, item = key, rest, {**item, "loc": loc}
        lines.append(f"  {path}: {message}{origin_of(origins, tuple(item['loc']))}")
    return "\n".join(lines)


def _parse_value(override: str, raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override '{override}': the value is not valid YAML ({problem}); quote it, e.g. "
                          f"'{override.partition('=')[0]}=\"...\"'") from None


def apply_overrides(data: dict, overrides: list[str], origins: Origins | None = None) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, returning a new dict. A value that
    does not parse is a ConfigError naming the override; `origins`, when given, records each override's keys."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{override}' must look like key.path=value")
        node, names = result, key.split(".")
        parts: list = []
        for depth, name in enumerate(names):
            where = ".".join(names[: depth + 1])
            if isinstance(node, list):
                if not name.isdigit() or int(name) >= len(node):
                    raise ConfigError(f"override '{override}': '{where}' is not an index of a list of {len(node)}")
                part = int(name)
            else:
                part = name
            parts.append(part)
            if depth == len(names) - 1:
                node[part] = _parse_value(override, raw)
                break
            child = node[part] if isinstance(node, list) else node.setdefault(part, {})
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override '{override}': '{where}' is not a section")
            node = child
        if origins is not None:
            for path in [p for p in origins if p[: len(parts)] == tuple(parts)]:
                del origins[path]
            origins[tuple(parts)] = f"override '{override}'"
    return result


def non_finite_floats(data, path: tuple = ()) -> list[tuple]:
    """Key paths of every NaN or infinite float anywhere in a job dict (reward kwargs included)."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [path]
    if isinstance(data, dict):
        return [bad for key, value in data.items() for bad in non_finite_floats(value, (*path, key))]
    if isinstance(data, list):
        return [bad for index, value in enumerate(data) for bad in non_finite_floats(value, (*path, index))]
    return []


def validate_job(config: type[JobConfig], data: dict, source: str = "<dict>",
                 origins: Origins | None = None) -> JobConfig:
    """Validate a job dict against a kind's config class; raise ConfigError naming every bad key path (and, with
    `origins`, the file line or override it came from). Every float anywhere must be finite."""
    lines = problem_lines([f"{'.'.join(map(str, path))}: got a non-finite number; every number must be finite"
                           for path in non_finite_floats(data)], origins)
    try:
        cfg = config.model_validate(data)
    except ValidationError as err:
        found = format_validation_error(err, source, origins).splitlines()[1:]
        lines += [line for line in found if line.partition(":")[0] not in {old.partition(":")[0] for old in lines}]
    if lines:
        raise ConfigError(f"invalid job config ({source}):\n" + "\n".join(lines))
    return cfg


def key_origins(text: str, source: str) -> Origins:
    """{key path: "source:line"} of every key and list item of a YAML document (1-based lines)."""
    origins: Origins = {}

    def walk(node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                origins[child] = f"{source}:{key.start_mark.line + 1}"
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                origins[child] = f"{source}:{item.start_mark.line + 1}"
                walk(item, child)

    walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    return origins


def read_job(path: str | Path) -> tuple[dict, Origins]:
    """A YAML job file as a dict (not validated yet), and where each key came from (`apply_overrides` adds the
    command line's; see `kinds.load_job`). The file must hold a mapping: an empty file, a list or a scalar is a ConfigError, not the default job."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job file not found: {path}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        raise ConfigError(f"{path}: the job file is empty; it must be a mapping of keys (at least `kind:`)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file must be a mapping of keys, got {type(data).__name__} {data!r:.40}")
    return data, key_origins(text, str(path))


# How a job's input paths resolve (JobConfig.INPUT_PATHS: {dotted key pattern: mode}; '*' matches one list index or
# key, a glob matches key names): "file": a relative path always resolves; "local": only when it exists there (a
# model path may be a hub id such as org/name); "reward": the FILE.py of a FILE.py:NAME reward.
REWARD_INPUT_PATHS = {"reward.rewards.*.name": "reward", "reward.rewards.*.kwargs.path": "local",
                      "reward.rewards.*.kwargs.*_path": "local", "reward.rewards.*.kwargs.*_file": "local",
                      "reward.rewards.*.kwargs.*_dir": "local"}


def _matches(pattern: str, loc: tuple) -> bool:
    import fnmatch

    parts = pattern.split(".")
    return len(parts) == len(loc) and all(fnmatch.fnmatchcase(str(k), p) for p, k in zip(parts, loc))


def input_path_mode(patterns: dict[str, str], loc: tuple) -> str | None:
    """The mode of the first INPUT_PATHS pattern matching key path `loc` (None: not an input path)."""
    return next((m for p, m in patterns.items() if _matches(p, loc)), None)


def _resolved(value: str, mode: str, base: Path) -> str:
    if mode == "reward":
        target, sep, attribute = value.rpartition(":")
        if not sep or not target.endswith(".py") or "://" in value:
            return value
        return f"{_resolved(target, 'file', base)}:{attribute}"
    if not value or "://" in value or value.startswith("builtin:") or Path(value).expanduser().is_absolute():
        return value
    path, cwd = (base / value).resolve(), Path.cwd().resolve()
    if mode != "file" and not path.exists() and not value.startswith(("./", "../")):
        return value  # perhaps a model id (org/name); an explicit ./ or ../ is always a path
    # Relative to the current directory when under it (a file reward's name is its detail key: running from the
    # repository root keeps it as short as it was written), else absolute.
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def resolve_input_paths(data: Any, patterns: dict[str, str], base: Path,
                        only: Callable[[tuple], bool] = lambda loc: True, loc: tuple = ()) -> Any:
    """A copy of job dict `data` whose relative input paths (the keys `patterns` names, where `only(key path)`)
    are resolved against `base` (the job file's directory for values written in it, the current directory for
    command-line overrides), written relative to the current directory when under it and absolute otherwise."""
    if isinstance(data, dict):
        return {k: resolve_input_paths(v, patterns, base, only, (*loc, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_input_paths(v, patterns, base, only, (*loc, i)) for i, v in enumerate(data)]
    if isinstance(data, str) and only(loc):
        mode = input_path_mode(patterns, loc)
        if mode is not None:
            return _resolved(data, mode, base)
    return data


def dump_job(config: JobConfig) -> str:
    """The resolved config as YAML, as written to runs/NAME/config.yaml."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
