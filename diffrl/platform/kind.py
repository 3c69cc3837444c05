"""A job kind: its typed config, the roles it needs and its controller. The runtime (`runtime.run_job`), run
directories and resume rules, `--check`, `diffrl submit`, the cluster templates and the report take a kind and
work the same for every one; `diffrl.kinds` holds the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from diffrl.platform.config import JobConfig
    from diffrl.platform.roles import RoleSpec
    from diffrl.platform.runtime import RunContext


@dataclass(frozen=True)
class JobKind:
    """- `config`: the kind's config class (extends JobConfig; its `kind` field is a Literal of `name`);
    - `roles(cfg)`: the worker groups to start, in set-up order;
    - `run(ctx)`: the controller, given the live roles and the run directory; returns a summary dict;
    - `files(cfg)`: {dotted key: local path} of the input files the job reads, which `diffrl submit` ships with
      the job (and renames under its data directory);
    - `check(cfg, local)`: deep checks a config class cannot make by itself (weights exist, rewards resolve, prompts
      carry what the rewards need), as "key: message" lines; run by `--check` and before any work starts;
      `local=False` when the job will run on a cluster (its weights live on the cluster's storage)."""

    name: str
    config: type[JobConfig]
    roles: Callable[[JobConfig], list[RoleSpec]]
    run: Callable[[RunContext], dict]
    files: Callable[[JobConfig], dict[str, str]] = lambda cfg: {}
    check: Callable[[JobConfig, bool], list[str]] = lambda cfg, local: []
