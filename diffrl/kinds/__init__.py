"""The job-kind registry: every kind the CLI, `--check`, `diffrl submit`, the cluster templates and the report
know. A kind is registered with one line at the bottom of this file (or by `register` from any module, e.g. a
test or a plug-in)."""

from __future__ import annotations

from pathlib import Path

from diffrl.platform.config import (ConfigError, JobConfig, Origins, apply_overrides, origin_of, problem_lines, read_job,
                                    resolve_input_paths, validate_job)
from diffrl.platform.kind import JobKind
from diffrl.platform.roles import check_colocation

KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Add `kind` to the registry (a kind of the same name is replaced)."""
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    if name not in KINDS:
        raise ConfigError(f"kind: got {name!r}; allowed: {sorted(KINDS)}")
    return KINDS[name]


def kind_of(cfg: JobConfig) -> JobKind:
    return get_kind(cfg.kind)


def parse_job(data: dict, source: str = "<dict>", origins: Origins | None = None, local: bool = True) -> JobConfig:
    """Validate a job dict completely — its kind's config, the roles it derives (colocation), then the kind's deep
    checks (weights, rewards, prompts) — and raise ConfigError naming every bad key path (with `origins`, the file
    line or override it came from) before any work starts. `local=False` (submitting, rendering cluster files)
    skips what only the cluster has: model weights on its storage."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job file must be a mapping of keys, got {type(data).__name__}")
    name = data.get("kind", "rl")
    if name not in KINDS:
        raise ConfigError(f"invalid job config ({source}):\n  kind: got {name!r}; allowed: {sorted(KINDS)}")
    kind = KINDS[name]
    cfg = validate_job(kind.config, {**data, "kind": name}, source, origins)
    try:
        specs = kind.roles(cfg)
        check_colocation(specs, cfg.ray.colocate)
        # In-process workers share one process: a collective role (a process group) can only have one rank there.
        for spec in specs:
            if cfg.backend == "local" and spec.collective and spec.workers > 1:
                raise ValueError(f"backend: local runs one {spec.name} rank; set {spec.name}.num_workers=1 or "
                                 f"backend: ray")
    except ValueError as err:
        raise ConfigError(f"invalid job config ({source}):\n  {err}") from None
    problems = kind.check(cfg, local)
    if problems:
        raise ConfigError(f"invalid job config ({source}):\n" + "\n".join(problem_lines(problems, origins)))
    return cfg


def load_job(path: str | Path, overrides: list[str] | None = None, local: bool = True) -> JobConfig:
    """Read a YAML job file, apply dotted overrides and validate it (`local=False`: for a cluster, see parse_job).
    Relative input paths (the kind's INPUT_PATHS) resolve against the job file's directory when the file gives them
    and against the current directory when an override does."""
    data, origins = read_job(path)
    data = resolve_input_paths(data, _input_paths(data), Path(path).resolve().parent)
    data = apply_overrides(data, overrides or [], origins)

    def overridden(loc: tuple) -> bool:
        return origin_of(origins, loc).startswith(" (from override")

    data = resolve_input_paths(data, _input_paths(data), Path.cwd(), only=overridden)
    return parse_job(data, source=str(path), origins=origins, local=local)


def _input_paths(data: dict) -> dict[str, str]:
    kind = KINDS.get(data.get("kind", "rl")) if isinstance(data, dict) else None
    return kind.config.INPUT_PATHS if kind else {}


from diffrl.kinds import adversarial, dllm_decode, dllm_rl, pretrain, rl, solver_tune  # noqa: E402  (the built-in kinds, one line each)

register(rl.KIND)
register(pretrain.KIND)
register(solver_tune.KIND)
register(dllm_decode.KIND)
register(adversarial.KIND)
register(dllm_rl.KIND)


def run_job(cfg: JobConfig, resume: bool = False, echo=print) -> dict:
    """Run a validated job with its kind's roles and controller (what `diffrl run` does); returns the summary."""
    from diffrl.platform.runtime import run_job as run_kind

    return run_kind(kind_of(cfg), cfg, resume=resume, echo=echo)
