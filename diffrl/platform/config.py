"""Typed job files: pydantic models per role, YAML loading, dotted command-line overrides.

A job file is the single source of truth for a run. It is validated completely before any work starts; every error
names the key path and what is allowed, and the CLI turns it into exit code 2 with nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    placement_timeout_s: float = Field(120.0, gt=0, description="seconds a role's resource pool may wait to be placed")
    colocate: list[list[str]] = Field(
        default_factory=list, description="groups of roles sharing one resource pool, worker i of each on bundle i "
        "(roles: rollout, learner, explore, reward0, reward1, ...), e.g. [[rollout, learner]] with fractional GPUs",
    )


Resources = dict[str, float]
RESOURCES_HELP = "custom Ray resources per worker, e.g. {node_a: 1} to land on the nodes that advertise node_a"


class LoraConfig(Section):
    enabled: bool = False
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    target_modules: list[str] | None = Field(None, description="None uses the model adapter's defaults")


class ModelConfig(Section):
    name: Literal["tiny_t2i", "sd3", "flux", "sana"] = Field(
        "tiny_t2i", description="tiny_t2i (built in), or a diffusers pipeline: sd3 (SD3/SD3.5), flux (FLUX.1), sana"
    )
    path: str | None = Field(
        "builtin:shapes_base",
        description="weights: builtin:NAME, a local directory, or a model id already in the local HF cache",
    )
    resolution: int = Field(512, ge=8, description="image side in pixels (diffusers models)")
    max_sequence_length: int = Field(256, ge=1, description="text tokens for T5/Gemma encoders (diffusers models)")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="dtype the diffusers pipeline loads in")
    guidance: float = Field(3.5, ge=0, description="FLUX.1-dev's distilled guidance value (ignored elsewhere)")
    lora: LoraConfig = LoraConfig()


class SolConfig(Section):
    """Sol-RL (arXiv 2604.06916): explore a pool of seeds in low precision, regenerate the chosen ones."""

    pool_size: int = Field(96, ge=2, description="candidate seeds per prompt explored by the low-precision copy")
    select: Literal["best_worst", "mean_deviation", "random"] = "best_worst"
    explore_steps: int = Field(6, ge=1, description="deterministic ODE steps of the exploration copy")
    explore_precision: Literal["fp32", "bf16", "nvfp4", "fp8"] = "nvfp4"
    explore_guidance_scale: float = Field(1.0, ge=1.0, description="CFG while exploring (Sol-RL: none)")
    explore_workers: int = Field(1, ge=1)
    explore_cpus_per_worker: float = Field(1.0, gt=0)
    explore_gpus_per_worker: float = Field(0.0, ge=0)
    explore_resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    colocate: bool = Field(False, description="explore workers share the rollout workers' resource bundles "
                                              "(explore worker i on rollout bundle i, fractional GPUs)")
    regenerate: bool = Field(True, description="False trains on the exploration samples themselves (ablation)")
    audit_prompts: int = Field(1, ge=0, description="prompts per step whose whole pool is also regenerated in full "
                                                    "precision to measure top-K agreement (0: off)")


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    max_restarts: int = Field(3, ge=0, description="a dead rollout (or explore) worker is restarted this often, given "
                                                   "the current weights, and its shard re-sent (Ray backend)")
    prompts_per_step: int = Field(8, ge=1, description="distinct prompts per RL step")
    group_size: int = Field(8, ge=2, description="samples per prompt; advantages are computed within a group")
    num_steps: int = Field(10, ge=1, description="sampler steps per rollout")
    sampler: Literal["ode", "sde", "cps"] = Field("ode", description="ode, Flow-GRPO's sde, or cps (coefficient-preserving)")
    noise_level: float = Field(0.7, ge=0, le=1.0, description="SDE/CPS noise level a")
    sde_window: int = Field(
        0, ge=0, description="Flow-GRPO-Fast: SDE only inside a random window of this many steps in the first half "
        "(only those steps are stored and trained); 0 makes every step but the last stochastic",
    )
    guidance_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance (1 disables; Flow-GRPO trains with it)")
    precision: Literal["fp32", "bf16", "nvfp4", "fp8"] = Field(
        "fp32", description="nvfp4: linear layers fake-quantized (or transformer-engine on 10.x GPUs); fp8: 9.x GPUs"
    )
    quant_backend: Literal["auto", "emulated", "transformer_engine"] = Field(
        "auto", description="auto: transformer-engine when the GPU supports the precision, else emulated NVFP4"
    )
    quant_skip: list[str] | None = Field(None, description="regexes of layer names kept in full precision")
    quant_min_features: int = Field(16, ge=1, description="layers with fewer in/out features stay full precision")
    batch_size: int = Field(64, ge=1, description="samples per forward pass inside a worker")
    strategy: Literal["standard", "sol"] = Field("standard", description="sol: Sol-RL explore / select / regenerate")
    sol: SolConfig = SolConfig()


class AWMConfig(Section):
    """Advantage Weighted Matching (arXiv 2509.25050); defaults from ALGORITHMS.md, tuned for the shapes world."""

    num_timesteps: int = Field(6, ge=1, description="training timesteps per sample (strata of the rollout grid)")
    timestep_fraction: float = Field(0.9, gt=0, le=1, description="strata cover grid steps [1, fraction * steps)")
    huber_p: float = Field(0.25, gt=0, le=1)
    kl_beta: float = Field(1e-3, ge=0, description="weight of ||v - v_ref||^2 to the frozen base")
    ema_beta: float = Field(0.0, ge=0, description="weight of the EMA trust region ||v - v_ema||^2; 0 disables")
    ema_rate: float = Field(1e-3, ge=0)
    ema_max_decay: float = Field(0.3, ge=0, lt=1)
    adv_clip: float = Field(5.0, gt=0)
    negative_scale: float = Field(1.0, ge=0, le=1, description="multiplies negative advantages (collapse guard)")
    global_std: bool = False
    shared_noise: bool = Field(False, description="one set of training timesteps and noise per prompt group")


class FlowGRPOConfig(Section):
    """Flow-GRPO (arXiv 2505.05470); defaults from the GenEval preset of yifan123/flow_grpo (ALGORITHMS.md)."""

    clip_range: float = Field(1e-4, gt=0, description="PPO ratio clip eps")
    clip_range_high: float | None = Field(None, gt=0, description="asymmetric upper clip; None uses clip_range")
    kl_beta: float = Field(0.04, ge=0, description="weight of the KL to the reference policy's step means")
    timestep_fraction: float = Field(1.0, gt=0, le=1, description="share of the stored steps trained per sample")
    adv_clip: float = Field(5.0, gt=0)
    global_std: bool = Field(True, description="advantage std over the whole batch (the presets' default)")


class NFTConfig(Section):
    """DiffusionNFT as Sol-RL trains it (NVlabs/Sana train_scripts/sol_rl; ALGORITHMS.md)."""

    num_timesteps: int = Field(6, ge=1, description="training timesteps per sample (strata of the rollout grid)")
    timestep_fraction: float = Field(0.9, gt=0, le=1, description="strata cover grid steps [1, fraction * steps)")
    beta: float = Field(1.0, gt=0, description="mixing of the implicit positive/negative policies")
    kl_weight: float = Field(1e-4, ge=0, description="weight of ||v - v_ref||^2")
    adv_clip: float = Field(5.0, gt=0)
    global_std: bool = False
    old_decay_rate: float = Field(1e-3, ge=0, description="old-policy EMA decay = min(rate * step, max)")
    old_max_decay: float = Field(0.5, ge=0, lt=1)


class LearnerConfig(Section):
    num_workers: int = Field(1, ge=1, description="data-parallel DeepSpeed ranks")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    algorithm: Literal["awm", "flow_grpo", "nft"] = "awm"
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up over this many updates (0: none)")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage; 3 partitions parameters (gathered for sync)")
    micro_batch_size: int = Field(64, ge=1, description="(sample, timestep) rows per forward/backward")
    sync_bucket_mb: float = Field(64.0, gt=0, description="weight sync packs tensors into flat buckets of this size")
    sync_backend: Literal["object_store", "broadcast"] = Field(
        "object_store", description="object_store: one payload through Ray; broadcast: a collective from learner rank 0 "
        "to the inference workers (NCCL on GPUs, gloo on CPU)",
    )
    eval_ema_decay: float = Field(
        0.0, ge=0, lt=1, description="EMA of the trained weights used for held-out eval and the final weights; 0: off"
    )
    awm: AWMConfig = AWMConfig()
    flow_grpo: FlowGRPOConfig = FlowGRPOConfig()
    nft: NFTConfig = NFTConfig()


class RewardSpec(Section):
    name: str = Field(description="a registered name, pkg.module:factory, path/file.py:factory, or a server URL")
    weight: float = 1.0
    kwargs: dict[str, Any] = {}
    retries: int = Field(2, ge=0, description="extra attempts after a failure (exception, bad output, timeout)")
    timeout_s: float | None = Field(None, gt=0, description="seconds one call may take; None waits forever")
    backoff_s: float = Field(0.5, ge=0, description="wait before retry i is backoff_s * 2**i")
    num_workers: int | None = Field(None, ge=1, description="replicas of this reward (None: reward.num_workers)")
    cpus_per_worker: float | None = Field(None, gt=0, description="None: reward.cpus_per_worker")
    gpus_per_worker: float = Field(0.0, ge=0, description="fractional GPUs per replica")
    resources: Resources | None = Field(None, description="custom Ray resources per replica (None: reward.resources)")


class RewardConfig(Section):
    """Each reward runs in its own worker group (replicas, CPUs/GPUs); the job's reward is their weighted sum."""

    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="geneval_shapes")], min_length=1)
    num_workers: int = Field(1, ge=1, description="default replicas per reward")
    cpus_per_worker: float = Field(0.5, gt=0, description="default CPUs per replica")
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    max_restarts: int = Field(3, ge=0, description="a crashed reward replica is restarted this often; its batch is "
                                                   "re-sent (Ray backend)")


class DataConfig(Section):
    source: Literal["shapes", "files"] = Field(
        "shapes", description="shapes: the built-in shapes world; files: train_file and eval_file (Flow-GRPO formats)"
    )
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="share of shapes prompts held out for eval")
    split_seed: int = 0
    train_file: str | None = Field(None, description=".txt (one prompt per line) or .jsonl (GenEval metadata)")
    eval_file: str | None = Field(None, description="held-out prompts, same formats")

    @model_validator(mode="after")
    def _check_files(self) -> DataConfig:
        if self.source == "files":
            for key in ("train_file", "eval_file"):
                value = getattr(self, key)
                if value is None:
                    raise ValueError(f"data.source=files needs data.{key}")
                if not Path(value).is_file():
                    raise ValueError(f"data.{key}: file not found: {value}")
                if Path(value).suffix not in (".txt", ".jsonl"):
                    raise ValueError(f"data.{key}: {value} must be .txt or .jsonl")
        return self


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline writes runs/NAME/wandb (sync later with `wandb sync`); online needs a login"
    )
    project: str = "diffrl"
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)


class TrainerConfig(Section):
    steps: int = Field(50, ge=0)
    eval_every: int = Field(0, ge=0, description="held-out eval every N steps (0: only before and after)")
    eval_prompts: Literal["heldout", "train"] = "heldout"
    eval_seeds_per_prompt: int = Field(16, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="full checkpoint (exact resume) every N steps; 0: none")
    keep_checkpoints: int = Field(3, ge=0, description="newest checkpoints kept on disk (0 keeps all)")
    max_learner_failures: int = Field(
        3, ge=0, description="with resume: auto, a dead learner restarts the roles from the newest checkpoint at "
        "most this often per run",
    )
    report_every: int = Field(25, ge=0, description="rebuild report.html every N steps (and after every eval); 0: "
                                                    "only at evals and the end")
    wandb: WandbConfig = WandbConfig()
    sample_grid_prompts: int = Field(8, ge=1)
    eval_metric: str = Field("geneval_shapes/strict", description="reward detail averaged over tags for the headline")
    eval_label: str = "GenEval-shapes"


class RLJobConfig(Section):
    kind: Literal["rl"] = "rl"
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    output_dir: str = "runs"
    backend: Literal["ray", "local"] = Field("ray", description="local runs every worker in-process (debugging)")
    resume: Literal["never", "auto"] = Field(
        "never", description="auto: continue runs/NAME from its newest complete checkpoint when there is one (and "
        "restart from it when a learner dies); never: a new run directory every time",
    )
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
        algorithm = self.learner.algorithm
        if algorithm in ("awm", "nft"):
            section = getattr(self.learner, algorithm)
            wanted = section.num_timesteps
            # Training samples come from the rollout grid, or from the exploration grid when Sol-RL trains on its
            # exploration samples directly.
            trained_on_explore = self.rollout.strategy == "sol" and not self.rollout.sol.regenerate
            steps_key = "rollout.sol.explore_steps" if trained_on_explore else "rollout.num_steps"
            steps = self.rollout.sol.explore_steps if trained_on_explore else self.rollout.num_steps
            strata = int(steps * section.timestep_fraction) - 1  # grid indices [1, fraction * steps)
            if wanted > strata:
                raise ValueError(
                    f"learner.{algorithm}.num_timesteps={wanted} exceeds the {max(strata, 0)} training timesteps "
                    f"that {steps_key}={steps} offers; lower it or raise the steps"
                )
        if algorithm == "flow_grpo" and self.rollout.sampler == "ode":
            raise ValueError("learner.algorithm=flow_grpo needs stochastic rollouts with log-probs: "
                             "set rollout.sampler to sde or cps")
        if self.rollout.strategy == "sol":
            sol = self.rollout.sol
            if sol.pool_size < self.rollout.group_size:
                raise ValueError(f"rollout.sol.pool_size={sol.pool_size} must be at least rollout.group_size="
                                 f"{self.rollout.group_size} (the seeds chosen per prompt)")
            if sol.select == "best_worst" and self.rollout.group_size % 2:
                raise ValueError(f"rollout.sol.select=best_worst needs an even rollout.group_size, got "
                                 f"{self.rollout.group_size}")
            if sol.colocate and sol.explore_workers > self.rollout.num_workers:
                raise ValueError(f"rollout.sol.colocate needs rollout.sol.explore_workers={sol.explore_workers} <= "
                                 f"rollout.num_workers={self.rollout.num_workers} (one bundle each)")
            if algorithm == "flow_grpo" and not sol.regenerate:
                raise ValueError("rollout.sol.regenerate=false trains on ODE exploration samples, which carry no "
                                 "Flow-GRPO log-probs; use awm or nft")
        if self.rollout.precision == "fp8" and self.rollout.quant_backend == "emulated":
            raise ValueError("rollout.precision=fp8 runs through transformer-engine only; emulation covers nvfp4")
        if self.rollout.sde_window and self.rollout.sde_window > self.rollout.num_steps // 2:
            raise ValueError(f"rollout.sde_window={self.rollout.sde_window} must fit in the first half of "
                             f"rollout.num_steps={self.rollout.num_steps}")
        if self.learner.sync_backend == "broadcast":
            if self.backend == "local":
                raise ValueError("learner.sync_backend=broadcast needs backend: ray (a collective needs one process "
                                 "per member)")
            if self.learner.zero_stage == 3:
                raise ValueError("learner.sync_backend=broadcast does not support learner.zero_stage=3 yet; use "
                                 "object_store")
        roles = ["rollout", "learner", *[f"reward{i}" for i in range(len(self.reward.rewards))]]
        roles += ["explore"] if self.rollout.strategy == "sol" else []
        seen: set[str] = set()
        for group in self.ray.colocate:
            unknown = [role for role in group if role not in roles]
            if unknown:
                raise ValueError(f"ray.colocate: unknown role(s) {unknown}; this job's roles are {roles}")
            if len(group) < 2 or seen & set(group) or len(set(group)) < len(group):
                raise ValueError(f"ray.colocate: each group needs two or more roles, each role in one group only "
                                 f"(got {self.ray.colocate})")
            seen |= set(group)
        if self.rollout.strategy == "sol" and self.rollout.sol.colocate and "explore" in seen and not (
                {"rollout", "explore"} <= next(set(g) for g in self.ray.colocate if "explore" in g)):
            raise ValueError("rollout.sol.colocate puts explore with rollout; ray.colocate groups explore elsewhere")
        if self.learner.zero_stage == 3 and (self.trainer.checkpoint_every or self.resume == "auto"):
            raise ValueError("trainer.checkpoint_every / resume: auto need learner.zero_stage 0-2 (exact checkpoints "
                             "of ZeRO-3 partitions are not supported yet; final weights are still saved)")
        if self.backend == "local" and self.learner.num_workers > 1:
            raise ValueError("backend: local runs one learner; set learner.num_workers=1 or backend: ray")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass(frozen=True)
class RoleDemand:
    """What one role asks of Ray: `workers` actors of `cpus`/`gpus`/custom `resources` each."""

    role: str
    workers: int
    cpus: float
    gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    # A shared pool's bundles when they differ (bundle i holds worker i of each colocated role that has one);
    # None: `workers` bundles of cpus / gpus / resources each.
    bundles: tuple[dict[str, float], ...] | None = None

    def bundle_list(self) -> list[dict[str, float]]:
        """The Ray placement-group bundles of this pool."""
        if self.bundles is not None:
            return [dict(b) for b in self.bundles]
        bundle = {"CPU": self.cpus, **self.resources, **({"GPU": self.gpus} if self.gpus else {})}
        return [dict(bundle) for _ in range(self.workers)]

    @property
    def total_cpus(self) -> float:
        return sum(b.get("CPU", 0.0) for b in self.bundle_list())

    @property
    def total_gpus(self) -> float:
        return sum(b.get("GPU", 0.0) for b in self.bundle_list())

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.role} {self.workers} x ({self.cpus:g} CPU{gpus})"


def role_demands(cfg: RLJobConfig) -> list[RoleDemand]:
    """What each role's workers ask for, one entry per worker group: rollout, reward0.. (one per reward), learner and,
    under Sol-RL, explore."""
    demands = [RoleDemand("rollout", cfg.rollout.num_workers, cfg.rollout.cpus_per_worker,
                          cfg.rollout.gpus_per_worker, dict(cfg.rollout.resources))]
    for index, spec in enumerate(cfg.reward.rewards):
        demands.append(RoleDemand(f"reward{index}", spec.num_workers or cfg.reward.num_workers,
                                  spec.cpus_per_worker or cfg.reward.cpus_per_worker, spec.gpus_per_worker,
                                  spec.resources if spec.resources is not None else dict(cfg.reward.resources)))
    demands.append(RoleDemand("learner", cfg.learner.num_workers, cfg.learner.cpus_per_worker,
                              cfg.learner.gpus_per_worker, dict(cfg.learner.resources)))
    if cfg.rollout.strategy == "sol":
        sol = cfg.rollout.sol
        demands.append(RoleDemand("explore", sol.explore_workers, sol.explore_cpus_per_worker,
                                  sol.explore_gpus_per_worker, dict(sol.explore_resources)))
    return demands


def colocation_groups(cfg: RLJobConfig) -> list[list[str]]:
    """Roles that share one resource pool: `ray.colocate`, plus [rollout, explore] for rollout.sol.colocate."""
    groups = [list(group) for group in cfg.ray.colocate]
    if cfg.rollout.strategy == "sol" and cfg.rollout.sol.colocate:
        joined = next((g for g in groups if "rollout" in g), None)
        if joined is None:
            groups.append(["rollout", "explore"])
        elif "explore" not in joined:
            joined.append("explore")
    return groups


def resource_pools(cfg: RLJobConfig) -> list[RoleDemand]:
    """The resource pools (Ray placement groups) the RL controller creates: one per role, except that colocated
    roles share one whose bundle i holds worker i of each role that has an i-th worker (as many bundles as the
    largest role has workers). A pool's `role` names its roles joined by '+'."""
    demands = {d.role: d for d in role_demands(cfg)}
    grouped = {role for group in colocation_groups(cfg) for role in group}
    pools = [d for d in demands.values() if d.role not in grouped]
    for group in colocation_groups(cfg):
        members = [demands[role] for role in group]
        bundles = []
        for index in range(max(m.workers for m in members)):
            bundle: dict[str, float] = {}
            for member in (m for m in members if m.workers > index):
                for key, value in member.bundle_list()[0].items():
                    bundle[key] = bundle.get(key, 0.0) + value
            bundles.append(bundle)
        largest = bundles[0]  # bundle 0 holds a worker of every role
        custom = {k: v for k, v in largest.items() if k not in ("CPU", "GPU")}
        pools.append(RoleDemand("+".join(group), len(bundles), largest.get("CPU", 0.0), largest.get("GPU", 0.0),
                                custom, tuple(bundles)))
    return pools


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
