"""The RL job's typed config: model, rollout (with Sol-RL), learner (AWM, Flow-GRPO, DiffusionNFT), rewards, prompt
data and the trainer's eval settings, on top of the base every job kind shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from diffrl.algorithms.solvers import check_grid
from diffrl.kinds.rl.peer_config import (DGPOConfig, DiffusionDPOConfig, FlowGRPOConfig, GRPOGuardConfig,
                                         MixGRPOConfig, check_peer_objective)
from diffrl.platform.config import (BASE_RESUMABLE, RESOURCES_HELP, REWARD_INPUT_PATHS, JobConfig, Resources, Section,
                                    TrainerBase)
from diffrl.rewards.base import resolve_headline
from diffrl.workers.schedule import read_schedule


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


class SASolverConfig(Section):
    """SA-Solver (rollout.sampler: sa_solver; Xue et al., NeurIPS 2023): Adams predictor/corrector orders and the
    stochasticity tau, applied while sigma lies in tau_window (diffusers' default: tau 1 on timesteps 200-800)."""

    predictor_order: int = Field(2, ge=1, le=4)
    corrector_order: int = Field(2, ge=0, le=4, description="0: predictor only")
    tau: float = Field(1.0, ge=0, description="SDE stochasticity inside tau_window; 0: the probability-flow ODE")
    tau_window: tuple[float, float] = Field((0.2, 0.8), description="[low, high] sigma range where tau applies")


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    max_restarts: int = Field(3, ge=0, description="a dead rollout (or explore) worker is restarted this often, given "
                                                   "the current weights, and its shard re-sent (Ray backend)")
    prompts_per_step: int = Field(8, ge=1, description="distinct prompts per RL step")
    group_size: int = Field(8, ge=2, description="samples per prompt; advantages are computed within a group")
    num_steps: int = Field(10, ge=1, description="sampler steps per rollout (model calls; NFE)")
    sampler: Literal["ode", "sde", "cps", "sa_solver"] = Field(
        "ode", description="ode, Flow-GRPO's sde, cps (coefficient-preserving) or sa_solver")
    noise_level: float = Field(0.7, ge=0, le=1.0, description="SDE/CPS noise level a")
    sa_solver: SASolverConfig = SASolverConfig()
    grid: list[float] | None = Field(None, description="the sampler's time grid, sigmas from 1 to 0 with num_steps "
                                                       "steps; None: evenly spaced")
    schedule: str | None = Field(None, description="a solver_tune schedule file: sets (overrides) sampler, its "
                                                   "options, grid and num_steps")
    sde_window: int = Field(
        0, ge=0, description="Flow-GRPO-Fast: SDE only inside a random window of this many steps in the first half "
        "(only those steps are stored and trained); 0 makes every step but the last stochastic",
    )
    guidance_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance (1 disables; Flow-GRPO trains with it)")
    window_tail_compress: float | None = Field(
        None, gt=0, le=1, description="MixGRPO-Flash: after the SDE window, DPM-Solver++ (2M) on this share of the "
        "remaining steps (None: the sampler's own steps)")
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

    @model_validator(mode="before")
    @classmethod
    def _apply_schedule(cls, data: Any) -> Any:
        """rollout.schedule sets the scheduled keys (sampler, its options, grid, num_steps): the schedule wins over
        the job file's values, which is what adding it to an existing job means (config.yaml keeps the result)."""
        if not isinstance(data, dict) or not data.get("schedule"):
            return data
        schedule = read_schedule(data["schedule"], "rollout.schedule")
        scheduled = {"sampler": schedule.solver, "num_steps": schedule.nfe, "grid": list(schedule.grid)}
        if schedule.solver == "sa_solver":
            scheduled["sa_solver"] = schedule.options
        else:
            scheduled.update(schedule.options)  # sde / cps: noise_level
        return {**data, **scheduled}

    @model_validator(mode="after")
    def _check_grid(self) -> RolloutConfig:
        if self.grid is not None:
            try:
                check_grid(self.grid)
            except ValueError as err:
                raise ValueError(f"rollout.grid: {err}") from None
            if len(self.grid) - 1 != self.num_steps:
                raise ValueError(f"rollout.grid has {len(self.grid) - 1} steps but rollout.num_steps="
                                 f"{self.num_steps}; make them agree")
        if self.sampler == "sa_solver" and self.sde_window:
            raise ValueError("rollout.sde_window is Flow-GRPO-Fast's SDE window; rollout.sampler=sa_solver takes "
                             "its stochasticity from rollout.sa_solver.tau_window")
        return self


class AWMConfig(Section):
    """Advantage Weighted Matching (arXiv 2509.25050); defaults from scxue/advantage_weighted_matching, tuned for the
    shapes world."""

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


class NFTConfig(Section):
    """DiffusionNFT as Sol-RL trains it (NVlabs/Sana train_scripts/sol_rl)."""

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
    algorithm: Literal["awm", "flow_grpo", "nft", "grpo_guard", "mixgrpo", "dgpo", "diffusion_dpo"] = "awm"
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
    grpo_guard: GRPOGuardConfig = GRPOGuardConfig()
    mixgrpo: MixGRPOConfig = MixGRPOConfig()
    dgpo: DGPOConfig = DGPOConfig()
    diffusion_dpo: DiffusionDPOConfig = DiffusionDPOConfig()


class RewardSpec(Section):
    name: str = Field(description="a registered name, pkg.module:factory, path/file.py:factory, or a server URL")
    weight: float = 1.0
    kwargs: dict[str, Any] = {}
    retries: int = Field(2, ge=0, description="extra attempts after a failure (exception, bad output, timeout)")
    timeout_s: float | None = Field(300.0, gt=0, description="seconds one call may take (None waits forever); on Ray "
                                    "an overdue replica is restarted (counted in reward.max_restarts) and the batch "
                                    "re-sent, so the hung call never runs beside its retry")
    backoff_s: float = Field(0.5, ge=0, description="wait before retry i is backoff_s * 2**i")
    num_workers: int | None = Field(None, ge=1, description="replicas of this reward (None: reward.num_workers)")
    cpus_per_worker: float | None = Field(None, gt=0, description="None: reward.cpus_per_worker")
    gpus_per_worker: float = Field(0.0, ge=0, description="fractional GPUs per replica")
    resources: Resources | None = Field(None, description="custom Ray resources per replica (None: reward.resources)")
    python: str | None = Field(None, description="Python interpreter of the environment the replicas run in (Ray "
                                                 "backend), e.g. a vLLM environment with vllm, ray and diffrl")


class RewardConfig(Section):
    """Each reward runs in its own worker group (replicas, CPUs/GPUs); the job's reward is their weighted sum."""

    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="geneval_shapes")], min_length=1)
    num_workers: int = Field(1, ge=1, description="default replicas per reward")
    cpus_per_worker: float = Field(0.5, gt=0, description="default CPUs per replica")
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    max_restarts: int = Field(3, ge=0, description="a crashed reward replica is restarted this often; its batch is "
                                                   "re-sent (Ray backend)")


class DataConfig(Section):
    source: Literal["shapes", "scenes", "files"] = Field(
        "shapes", description="shapes: the built-in shapes world; scenes: the harder scenes world; files: train_file "
        "and eval_file (Flow-GRPO formats)"
    )
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="share of shapes prompts held out for eval")
    heldout_per_tag: int = Field(4, ge=1, le=4, description="scenes prompts held out per task type for eval")
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


EVAL_METRIC_HELP = ("the held-out headline, averaged over tags: 'reward' (the weighted job reward), a reward's name "
                    "or NAME/DETAIL; None: the first reward's declared headline (geneval_shapes/strict), else reward")


def check_headline(trainer: Section, rewards: RewardConfig) -> None:
    """Fill trainer.eval_metric / eval_label from the job's rewards where unset; refuse a metric they cannot make."""
    metric, label = resolve_headline(trainer.eval_metric, trainer.eval_label, [r.name for r in rewards.rewards])
    # Written into __dict__: assignment would re-run the (validate_assignment) validators for no new information.
    trainer.__dict__.update(eval_metric=metric, eval_label=label)


class TrainerConfig(TrainerBase):
    """The base cadence plus the RL held-out eval: which prompts, how many seeds, the headline metric."""

    eval_prompts: Literal["heldout", "train"] = "heldout"
    eval_seeds_per_prompt: int = Field(16, ge=1)
    eval_sampler: Literal["ode", "rollout"] = Field(
        "ode", description="ode: the deterministic ODE on the even grid of eval_steps; rollout: the rollout's own "
        "sampler and grid (e.g. its rollout.schedule)")
    eval_steps: int | None = Field(None, ge=1, description="ODE steps of the eval (None: rollout.num_steps)")
    sample_grid_prompts: int = Field(8, ge=1)
    eval_metric: str | None = Field(None, description=EVAL_METRIC_HELP)
    eval_label: str | None = Field(None, description="what the end line and the report call the headline (None: "
                                                     "the reward's own label, else the metric)")


class RLJobConfig(JobConfig):
    kind: Literal["rl"] = "rl"
    INPUT_PATHS: ClassVar[dict[str, str]] = {
        "model.path": "local", "data.train_file": "file", "data.eval_file": "file", "rollout.schedule": "file",
        "learner.diffusion_dpo.pairs": "file", **REWARD_INPUT_PATHS}
    # What a resumed RL run may change besides the base keys: resources of every role, restarts, retries and
    # micro-batching of stateless roles. Anything else (model, algorithm, batch shape, learner ranks, seeds) would
    # make the continuation a different run.
    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE + (
        "rollout.num_workers", "rollout.cpus_per_worker", "rollout.gpus_per_worker",
        "rollout.resources", "rollout.max_restarts", "rollout.batch_size", "rollout.sol.explore_workers",
        "rollout.sol.explore_cpus_per_worker", "rollout.sol.explore_gpus_per_worker", "rollout.sol.explore_resources",
        "rollout.sol.colocate", "learner.cpus_per_worker", "learner.gpus_per_worker", "learner.resources",
        "reward.num_workers", "reward.cpus_per_worker", "reward.resources", "reward.max_restarts",
        "reward.rewards.*.num_workers", "reward.rewards.*.cpus_per_worker", "reward.rewards.*.gpus_per_worker",
        "reward.rewards.*.resources", "reward.rewards.*.retries", "reward.rewards.*.timeout_s",
        "reward.rewards.*.backoff_s", "reward.rewards.*.python",
    )

    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    reward: RewardConfig = RewardConfig()
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()

    @model_validator(mode="after")
    def _check_headline(self) -> RLJobConfig:
        check_headline(self.trainer, self.reward)
        return self

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
            # A tuned schedule drops into any job: its grid sets the steps, and the training timesteps follow it
            # (as they follow the steps when num_timesteps is left at its default).
            follows = self.rollout.schedule is not None or "num_timesteps" not in section.model_fields_set
            if wanted > strata >= 1 and follows:
                section.__dict__["num_timesteps"] = strata
                cause = f"rollout.schedule {self.rollout.schedule}" if self.rollout.schedule else steps_key
                self._notices.append(f"learner.{algorithm}.num_timesteps={strata} (was {wanted}): the training "
                                     f"timesteps follow the {steps} steps of {cause}")
            elif wanted > strata:
                raise ValueError(
                    f"learner.{algorithm}.num_timesteps={wanted} exceeds the {max(strata, 0)} training timesteps "
                    f"that {steps_key}={steps} offers; lower it or raise the steps"
                )
        if algorithm == "flow_grpo" and self.rollout.sampler not in ("sde", "cps"):
            raise ValueError(f"learner.algorithm=flow_grpo needs stochastic rollouts with log-probs: "
                             f"set rollout.sampler to sde or cps (got {self.rollout.sampler})")
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
            if algorithm in ("flow_grpo", "grpo_guard") and not sol.regenerate:
                raise ValueError("rollout.sol.regenerate=false trains on ODE exploration samples, which carry no "
                                 "Flow-GRPO log-probs; use awm or nft")
        if self.rollout.precision == "fp8" and self.rollout.quant_backend == "emulated":
            raise ValueError("rollout.precision=fp8 runs through transformer-engine only; emulation covers nvfp4")
        check_peer_objective(self)
        if algorithm == "mixgrpo" and self.rollout.sde_window > self.rollout.num_steps - 1:
            raise ValueError(f"rollout.sde_window={self.rollout.sde_window} must fit in the rollout.num_steps="
                             f"{self.rollout.num_steps} - 1 stochastic steps")
        elif self.rollout.sde_window and self.rollout.sde_window > self.rollout.num_steps // 2:
            raise ValueError(f"rollout.sde_window={self.rollout.sde_window} must fit in the first half of "
                             f"rollout.num_steps={self.rollout.num_steps}")
        if self.learner.sync_backend == "broadcast":
            if self.backend == "local":
                raise ValueError("learner.sync_backend=broadcast needs backend: ray (a collective needs one process "
                                 "per member)")
            if self.learner.zero_stage == 3:
                raise ValueError("learner.sync_backend=broadcast does not support learner.zero_stage=3 yet; use "
                                 "object_store")
        if self.learner.zero_stage == 3 and (self.trainer.checkpoint_every or self.resume == "auto"):
            raise ValueError("trainer.checkpoint_every / resume: auto need learner.zero_stage 0-2 (exact checkpoints "
                             "of ZeRO-3 partitions are not supported yet; final weights are still saved)")
        return self
