"""The typed config of `kind: dllm_rl`: RL post-training of a masked-diffusion LM (the shipped tiny dLLMs, or a
local LLaDA / Dream / Fast-dLLM v2 checkpoint) with the dLLM decode workers as the rollout role, the reward roles
scoring completions and the DeepSpeed learners training diffu-GRPO (d1; coupled masks: DiffuCoder) or wd1."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from diffrl.kinds.dllm_decode.config import DecodeConfig, DecodeModelConfig
from diffrl.kinds.pretrain.config import SortingDataConfig
from diffrl.kinds.rl.config import RewardConfig, RewardSpec
from diffrl.platform.config import (BASE_RESUMABLE, RESOURCES_HELP, REWARD_INPUT_PATHS, JobConfig, Resources, Section,
                                    TrainerBase)


def fast_dllm_rollouts() -> DecodeConfig:
    """Fast-dLLM's parallel decoding (confidence threshold 0.9) with the dual cache, sampling at temperature 1."""
    return DecodeConfig(rule="threshold", threshold=0.9, cache="dual", temperature=1.0)


class SortingTaskConfig(SortingDataConfig):
    """The digit-sorting world (diffrl.envs.sorting): training problems drawn per step, held-out ones never trained on."""

    heldout: int = Field(64, ge=1, description="held-out problems (never trained on) scored at each eval")


class FilesTaskConfig(Section):
    """Prompt files: JSON lines {"prompt": str, "reference": str} (the reference goes to the rewards' metadata)."""

    source: Literal["files"] = "files"
    train_file: str = Field(description="training prompts (drawn per step)")
    eval_file: str = Field(description="held-out prompts")


class DllmRolloutConfig(Section):
    """The decode workers: G completions per prompt, each from its own seed (temperature > 0)."""

    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    max_restarts: int = Field(3, ge=0, description="restarts of a dead decode worker (its completions are re-sent)")
    batch_size: int = Field(32, ge=1, description="sequences decoded together inside a worker")
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=2, description="completions per prompt (one group for the advantages)")
    decode: DecodeConfig = Field(default_factory=fast_dllm_rollouts, description="the rollouts' decoding policy "
                                 "(any of kind: dllm_decode's; default Fast-dLLM threshold + dual cache)")
    eval_decode: DecodeConfig | None = Field(None, description="the held-out eval's policy (None: decode, greedy)")


class DiffuGRPOConfig(Section):
    mu: int = Field(4, ge=1, description="inner updates per rollout batch (d1's num_iterations)")
    eps: float = Field(0.5, gt=0, description="ratio clip (d1's runs: 0.5)")
    beta: float = Field(0.04, ge=0, description="weight of the k3 KL to the starting weights")
    p_mask_prompt: float = Field(0.15, ge=0, lt=1, description="prompt tokens masked per pass (mask: prompt)")
    mask: Literal["prompt", "coupled"] = Field("prompt", description="prompt: d1's one-step estimator; coupled: "
                                               "DiffuCoder's complementary masks (each token masked exactly once)")
    coupled_low: float = Field(0.2, gt=0, lt=1)
    coupled_high: float = Field(0.8, gt=0, lt=1)


class WD1Config(Section):
    mu: int = Field(4, ge=1, description="inner updates per rollout batch")
    p_mask_prompt: float = Field(0.15, ge=0, lt=1)


class DllmRLLearnerConfig(Section):
    algorithm: Literal["diffu_grpo", "wd1"] = "diffu_grpo"
    num_workers: int = Field(1, ge=1, description="data-parallel DeepSpeed ranks (whole groups per rank)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    micro_batch_size: int = Field(64, ge=1, description="completions per forward/backward (whole groups)")
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = Field(1.0, ge=0)
    zero_stage: Literal[0, 1, 2] = 0
    sync_bucket_mb: float = Field(64.0, gt=0)
    leave_one_out: bool = Field(False, description="advantages r - mean of the others (DiffuCoder) instead of r - "
                                                   "group mean (d1, wd1)")
    diffu_grpo: DiffuGRPOConfig = DiffuGRPOConfig()
    wd1: WD1Config = WD1Config()


class DllmRLTrainerConfig(TrainerBase):
    steps: int = Field(50, ge=0)
    eval_label: str = "exact match"


def default_rewards() -> RewardConfig:
    return RewardConfig(rewards=[RewardSpec(name="char_accuracy")])


class DllmRLJobConfig(JobConfig):
    kind: Literal["dllm_rl"] = "dllm_rl"
    INPUT_PATHS: ClassVar[dict[str, str]] = {"model.path": "local", "data.train_file": "file",
                                             "data.eval_file": "file", **REWARD_INPUT_PATHS}
    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE + (
        "rollout.num_workers", "rollout.cpus_per_worker", "rollout.gpus_per_worker", "rollout.resources",
        "rollout.batch_size", "learner.cpus_per_worker", "learner.gpus_per_worker", "learner.resources",
        "reward.rewards.*.num_workers", "reward.rewards.*.cpus_per_worker")

    model: DecodeModelConfig = DecodeModelConfig()
    data: SortingTaskConfig | FilesTaskConfig = Field(default_factory=SortingTaskConfig, discriminator="source")
    rollout: DllmRolloutConfig = DllmRolloutConfig()
    learner: DllmRLLearnerConfig = DllmRLLearnerConfig()
    reward: RewardConfig = Field(default_factory=default_rewards)
    trainer: DllmRLTrainerConfig = DllmRLTrainerConfig()

    @model_validator(mode="after")
    def _check(self) -> DllmRLJobConfig:
        rollout, learner = self.rollout, self.learner
        if rollout.prompts_per_step % learner.num_workers:
            raise ValueError(f"learner.num_workers={learner.num_workers} must divide rollout.prompts_per_step="
                             f"{rollout.prompts_per_step} (each rank trains whole groups)")
        per_rank = rollout.prompts_per_step // learner.num_workers * rollout.group_size
        if learner.micro_batch_size % rollout.group_size or per_rank % learner.micro_batch_size:
            raise ValueError(f"learner.micro_batch_size={learner.micro_batch_size} must be a multiple of "
                             f"rollout.group_size={rollout.group_size} and divide the {per_rank} completions per rank")
        if rollout.decode.temperature <= 0:
            raise ValueError("rollout.decode.temperature must be > 0: the completions of a group differ only by "
                             "their seeds")
        section = learner.diffu_grpo
        if section.coupled_low > section.coupled_high:
            raise ValueError(f"learner.diffu_grpo.coupled_low={section.coupled_low} exceeds coupled_high="
                             f"{section.coupled_high}")
        if self.data.source == "sorting" and rollout.decode.gen_length != self.data.length:
            raise ValueError(f"rollout.decode.gen_length={rollout.decode.gen_length} must equal data.length="
                             f"{self.data.length} (the answer's length)")
        if self.data.source == "files":
            from diffrl.kinds.dllm_decode.prompts import read_prompts

            for key in ("train_file", "eval_file"):
                if not read_prompts(getattr(self.data, key), None):
                    raise ValueError(f"data.{key}: {getattr(self.data, key)} has no prompts")
        return self

    def eval_options(self) -> DecodeConfig:
        return self.rollout.eval_decode or self.rollout.decode.model_copy(update={"temperature": 0.0})

    def learner_dict(self) -> dict:
        out = self.learner.model_dump()
        out.update(lr_schedule="constant", min_lr=0.0)
        return out

    def files(self) -> dict[str, str]:
        if self.data.source != "files":
            return {}
        return {f"data.{key}": str(Path(getattr(self.data, key))) for key in ("train_file", "eval_file")}
