"""Typed job files: pydantic models per role, YAML loading, dotted command-line overrides.

A job file is the single source of truth for a run. It is validated completely before any work starts; every error
names the key path and what is allowed, and the CLI turns it into exit code 2 with nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A job file or override is invalid. The message names the key path (or file) and what is allowed."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid job config ({source}):"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "literal_error":
            message = f"got {item.get('input')!r}; {message}"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{override}' must look like key.path=value")
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{override}': '{'.'.join(parts[: depth + 1])}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def validate_job(config: type[JobConfig], data: dict, source: str = "<dict>") -> JobConfig:
    """Validate a job dict against a kind's config class; raise ConfigError naming every bad key path."""
    try:
        return config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_job_file(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A YAML job file as a dict, with dotted overrides applied (not validated yet)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file must be a mapping of keys, got {type(data).__name__}")
    return apply_overrides(data, overrides or [])


def dump_job(config: JobConfig) -> str:
    """The resolved config as YAML, as written to runs/NAME/config.yaml."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
