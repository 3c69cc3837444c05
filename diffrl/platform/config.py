"""Typed job files: pydantic models per role, YAML loading, dotted command-line overrides.

A job file is the single source of truth for a run. It is validated completely before any work starts; every error
names the key path and what is allowed, and the CLI turns it into exit code 2 with nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A job file or override is invalid. The message names the key path (or file) and what is allowed."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster to join (or RAY_ADDRESS); None starts a local one")
    num_cpus: int = Field(8, ge=1, description="logical CPUs of a local cluster (a scheduling budget, not cores)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a local cluster; None detects them")


class LoraConfig(Section):
    enabled: bool = False
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    target_modules: list[str] | None = Field(None, description="None uses the model adapter's defaults")


class ModelConfig(Section):
    name: Literal["tiny_t2i"] = "tiny_t2i"
    path: str | None = Field("builtin:shapes_base", description="weights directory, or builtin:NAME for shipped ones")
    lora: LoraConfig = LoraConfig()


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    prompts_per_step: int = Field(8, ge=1, description="distinct prompts per RL step")
    group_size: int = Field(8, ge=2, description="samples per prompt; advantages are computed within a group")
    num_steps: int = Field(10, ge=1, description="sampler steps per rollout")
    sampler: Literal["ode", "sde"] = "ode"
    noise_level: float = Field(0.7, ge=0, le=1.0, description="SDE noise level a (sampler: sde)")
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = Field(64, ge=1, description="samples per forward pass inside a worker")


class AWMConfig(Section):
    """Advantage Weighted Matching (arXiv 2509.25050); defaults from ALGORITHMS.md, tuned for the shapes world."""

    num_timesteps: int = Field(6, ge=1, description="training timesteps per sample (strata of the rollout grid)")
    huber_p: float = Field(0.25, gt=0, le=1)
    kl_beta: float = Field(1e-3, ge=0, description="weight of ||v - v_ref||^2 to the frozen base")
    ema_beta: float = Field(0.0, ge=0, description="weight of the EMA trust region ||v - v_ema||^2; 0 disables")
    ema_rate: float = Field(1e-3, ge=0)
    ema_max_decay: float = Field(0.3, ge=0, lt=1)
    adv_clip: float = Field(5.0, gt=0)
    negative_scale: float = Field(1.0, ge=0, le=1, description="multiplies negative advantages (collapse guard)")
    global_std: bool = False
    shared_noise: bool = Field(False, description="one set of training timesteps and noise per prompt group")


class LearnerConfig(Section):
    num_workers: int = Field(1, ge=1, description="data-parallel DeepSpeed ranks")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    algorithm: Literal["awm"] = "awm"
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    zero_stage: Literal[0, 1, 2] = 0
    micro_batch_size: int = Field(64, ge=1, description="(sample, timestep) rows per forward/backward")
    awm: AWMConfig = AWMConfig()


class RewardSpec(Section):
    name: str = Field(description="a registered reward name")
    weight: float = 1.0
    kwargs: dict[str, Any] = {}


class RewardConfig(Section):
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="geneval_shapes")], min_length=1)
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)


class DataConfig(Section):
    source: Literal["shapes"] = Field("shapes", description="prompt source: the built-in shapes world")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="share of prompts held out for eval")
    split_seed: int = 0


class TrainerConfig(Section):
    steps: int = Field(50, ge=0)
    eval_every: int = Field(0, ge=0, description="held-out eval every N steps (0: only before and after)")
    eval_prompts: Literal["heldout", "train"] = "heldout"
    eval_seeds_per_prompt: int = Field(16, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="0: only the final weights")
    sample_grid_prompts: int = Field(8, ge=1)
    eval_metric: str = Field("geneval_shapes/strict", description="reward detail averaged over tags for the headline")
    eval_label: str = "GenEval-shapes"


class RLJobConfig(Section):
    kind: Literal["rl"] = "rl"
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    output_dir: str = "runs"
    backend: Literal["ray", "local"] = Field("ray", description="local runs every worker in-process (debugging)")
    ray: RayConfig = RayConfig()
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    reward: RewardConfig = RewardConfig()
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()

    @model_validator(mode="after")
    def _check_batch_split(self) -> RLJobConfig:
        total = self.rollout.prompts_per_step * self.rollout.group_size
        if total % self.learner.num_workers:
            raise ValueError(
                f"learner.num_workers={self.learner.num_workers} must divide the batch "
                f"rollout.prompts_per_step * rollout.group_size = {total}"
            )
        strata = int(self.rollout.num_steps * 0.9) - 1  # AWM draws timesteps from grid indices [1, 0.9 * steps)
        if self.learner.awm.num_timesteps > strata:
            raise ValueError(
                f"learner.awm.num_timesteps={self.learner.awm.num_timesteps} exceeds the {max(strata, 0)} training "
                f"timesteps that rollout.num_steps={self.rollout.num_steps} offers; lower it or raise num_steps"
            )
        if self.backend == "local" and self.learner.num_workers > 1:
            raise ValueError("backend: local runs one learner; set learner.num_workers=1 or backend: ray")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


JOB_KINDS: dict[str, type[Section]] = {"rl": RLJobConfig}


def _format_validation_error(err: ValidationError, source: str) -> str:
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


def parse_job(data: dict, source: str = "<dict>") -> Section:
    """Validate a job dict; raise ConfigError naming every bad key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job file must be a mapping of keys, got {type(data).__name__}")
    kind = data.get("kind", "rl")
    if kind not in JOB_KINDS:
        raise ConfigError(f"invalid job config ({source}):\n  kind: got {kind!r}; allowed: {sorted(JOB_KINDS)}")
    try:
        return JOB_KINDS[kind].model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_job(path: str | Path, overrides: list[str] | None = None) -> Section:
    """Read a YAML job file, apply dotted overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_job(apply_overrides(data, overrides or []), source=str(path))


def dump_job(config: Section) -> str:
    """The resolved config as YAML, as written to runs/NAME/config.yaml."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
