"""The solver-tuning job's typed config: the model, the rollout and reward workers that score candidates, the
prompts, and what to tune: NFE budgets, candidate samplers and time grids, the reference sampler and the rule that
picks one schedule per NFE."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from diffrl.kinds.rl.config import EVAL_METRIC_HELP, DataConfig, ModelConfig, RewardConfig, SASolverConfig, check_headline
from diffrl.platform.config import (BASE_RESUMABLE, RESOURCES_HELP, REWARD_INPUT_PATHS, JobConfig, Resources, Section,
                                    TrainerBase)


class TuneRolloutConfig(Section):
    """The rollout workers that sample candidates and the reference (data-parallel over seeds)."""

    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    max_restarts: int = Field(3, ge=0)
    batch_size: int = Field(64, ge=1, description="samples per forward pass inside a worker")
    guidance_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance of every sampler")
    precision: Literal["fp32", "bf16"] = "fp32"


class CandidateConfig(Section):
    """One sampler to try at every NFE: a solver and how its time grid is made.

    grid: uniform (even in sigma, then `shift`-ed as SD3 does), uniform_lambda (even in log-SNR), optimized
    (DM-NonUniform's trust-region steps for the solver's order), data_driven (the interior points that minimise the
    distance of this sampler's samples to the reference's from the same seeds, searched on the rollout workers).
    """

    name: str = Field(description="the name in the report and the schedule files")
    solver: Literal["ode", "sa_solver"] = "ode"
    sa_solver: SASolverConfig = SASolverConfig()
    grid: Literal["uniform", "uniform_lambda", "optimized", "data_driven"] = "uniform"
    shift: float = Field(1.0, gt=0, description="SD3 time shift of the uniform grid")

    @property
    def order(self) -> int:
        """The order DM-NonUniform's optimization assumes: SA-Solver's predictor order, 1 for Euler."""
        return self.sa_solver.predictor_order if self.solver == "sa_solver" else 1

    def options(self) -> dict:
        return self.sa_solver.model_dump() if self.solver == "sa_solver" else {}


ORDER_3 = {"predictor_order": 3, "corrector_order": 3, "tau": 0.0}
DEFAULT_CANDIDATES = [
    {"name": "euler", "solver": "ode", "grid": "uniform"},
    {"name": "sa_solver", "solver": "sa_solver", "grid": "uniform", "sa_solver": {"tau": 0.0}},
    {"name": "sa_solver_optimized", "solver": "sa_solver", "grid": "optimized", "sa_solver": ORDER_3},
    {"name": "sa_solver_tuned", "solver": "sa_solver", "grid": "data_driven", "sa_solver": ORDER_3},
]


class DataDrivenConfig(Section):
    evaluations: int = Field(60, ge=1, description="sampler runs the grid search may spend per candidate and NFE")
    seeds: int = Field(64, ge=1, description="tuning samples (their own seeds, never the scoring seeds)")
    start: Literal["uniform", "optimized"] = Field("optimized", description="the grid the search starts from")


class TuneConfig(Section):
    nfes: list[int] = Field([4, 5, 6, 8, 10], min_length=1, description="NFE budgets (model calls per sample)")
    candidates: list[CandidateConfig] = Field(default_factory=lambda: [CandidateConfig(**c) for c in
                                                                       DEFAULT_CANDIDATES])
    seeds_per_prompt: int = Field(8, ge=1, description="scoring samples per prompt (the held-out eval seeds)")
    reference_steps: int = Field(100, ge=2, description="Euler ODE steps of the reference sampler")
    select: Literal["reward", "distance"] = Field("reward", description="what picks the schedule per NFE: the "
                                                                        "highest reward or the lowest distance")
    lambda_range: tuple[float, float] = Field((-3.0, 3.0), description="finite log-SNR ends of the uniform_lambda "
                                                                       "and optimized grids (sigma 1 and 0 are added)")
    data_driven: DataDrivenConfig = DataDrivenConfig()


class TuneTrainerConfig(TrainerBase):
    """The runtime's shared keys. A tuning job makes one pass over its candidates: steps, eval_every and
    checkpoint_every do not apply to it."""

    steps: int = Field(0, ge=0)
    eval_metric: str | None = Field(None, description=EVAL_METRIC_HELP)
    eval_label: str | None = Field(None, description="what the summary and figure call the metric (None: the "
                                                     "reward's own label, else the metric)")
    sample_grid_prompts: int = Field(8, ge=1)


class SolverTuneJobConfig(JobConfig):
    kind: Literal["solver_tune"] = "solver_tune"
    INPUT_PATHS: ClassVar[dict[str, str]] = {
        "model.path": "local", "data.train_file": "file", "data.eval_file": "file", **REWARD_INPUT_PATHS}
    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE

    model: ModelConfig = ModelConfig()
    rollout: TuneRolloutConfig = TuneRolloutConfig()
    reward: RewardConfig = RewardConfig()
    data: DataConfig = DataConfig()
    tune: TuneConfig = TuneConfig()
    trainer: TuneTrainerConfig = TuneTrainerConfig()

    @model_validator(mode="after")
    def _check(self) -> SolverTuneJobConfig:
        check_headline(self.trainer, self.reward)
        if any(n < 1 for n in self.tune.nfes):
            raise ValueError(f"tune.nfes must be positive, got {self.tune.nfes}")
        names = [c.name for c in self.tune.candidates]
        if not names:
            raise ValueError("tune.candidates: give at least one candidate")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"tune.candidates: names must be unique, repeated: {duplicated}")
        low, high = self.tune.lambda_range
        if not low < high:
            raise ValueError(f"tune.lambda_range: low {low} must be below high {high}")
        for index, candidate in enumerate(self.tune.candidates):
            too_small = [n for n in self.tune.nfes if n < max(candidate.order, 2)]
            if candidate.grid in ("optimized", "uniform_lambda", "data_driven") and too_small:
                raise ValueError(f"tune.candidates[{index}] ({candidate.name}): grid {candidate.grid} needs NFE >= "
                                 f"{max(candidate.order, 2)}, tune.nfes has {too_small}")
        return self
