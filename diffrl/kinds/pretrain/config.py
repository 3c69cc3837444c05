"""The pretraining job's typed config: the model to train (from scratch or from weights), the data source, the
data-parallel DeepSpeed learner ranks with their optimizer schedule and weight EMA, and the held-out eval (rollout
and reward workers score EMA samples)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from diffrl.kinds.dllm_decode.config import DecodeConfig
from diffrl.platform.config import BASE_RESUMABLE, RESOURCES_HELP, JobConfig, Resources, Section, TrainerBase


MODEL_OBJECTIVE = {"tiny_t2i": "flow_matching_x0", "tiny_dllm": "masked_diffusion", "tiny_dllm_v2": "block_diffusion",
                   "scenes_pref": "preference_contrastive"}
MODEL_DATA = {"tiny_t2i": ("shapes", "scenes"), "tiny_dllm": ("sorting",), "tiny_dllm_v2": ("sorting",),
              "scenes_pref": ("scenes_pairs",)}


class PretrainModelConfig(Section):
    name: Literal["tiny_t2i", "tiny_dllm", "tiny_dllm_v2", "scenes_pref"] = Field(
        "tiny_t2i", description="the built-in text-to-image model, a tiny dLLM: bidirectional (LLaDA form) or "
        "block-causal (Fast-dLLM v2 form), or the scenes world's learned preference reward (a dual encoder)")
    path: str | None = Field(None, description="None trains from a fresh initialization (seeded by the job's "
                                               "seed); builtin:NAME or a directory continues from those weights")


class ShapesDataConfig(Section):
    source: Literal["shapes"] = Field("shapes", description="data source (diffrl.kinds.pretrain.data.SOURCES)")
    renders_per_prompt: int = Field(256, ge=1, description="distinct renders of each training prompt")
    prompt_dropout: float = Field(0.1, ge=0, lt=1, description="share of captions replaced by the empty prompt "
                                                               "(classifier-free guidance)")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="share of prompts held out (never trained on)")
    split_seed: int = 0


class ScenesDataConfig(Section):
    """The scenes world (diffrl.envs.scenes): 3-5 objects of five shapes, five colors and two sizes on a 4x4 grid."""

    source: Literal["scenes"] = "scenes"
    renders_per_prompt: int = Field(64, ge=1, description="distinct renders of each training prompt")
    prompt_dropout: float = Field(0.1, ge=0, lt=1, description="share of captions replaced by the empty prompt "
                                                               "(classifier-free guidance)")
    heldout_per_tag: int = Field(4, ge=1, le=4, description="prompts held out per task type (never trained on)")
    split_seed: int = 0


class ScenesPairsDataConfig(Section):
    """(image, caption, one-attribute-changed image and caption) rows of the scenes world, for the learned
    preference reward (diffrl.kinds.pretrain.preference_data)."""

    source: Literal["scenes_pairs"] = "scenes_pairs"
    pairs_per_prompt: int = Field(32, ge=0, description="distinct (true, changed) pairs of each training prompt, "
                                  "rendered once and cached; 0: every row is a fresh render (no cache)")
    balance: Literal["kind", "tag"] = Field("tag", description="tag (the shipped recipe): a task type, a prompt, "
                                            "then one of its change kinds (relation changes make ~3% of the "
                                            "rows); kind: a change kind (color, size, count, relation, shape, "
                                            "binding) drawn uniformly, then a prompt it applies to")
    heldout_per_tag: int = Field(4, ge=1, le=4, description="prompts held out per task type (never trained on); "
                                 "the same split as the scenes world's pretraining and RL")
    heldout_pairs_per_prompt: int = Field(12, ge=1, description="verified pairs per held-out prompt at each eval")
    blur_prob: float = Field(0.5, ge=0, le=1, description="share of renders blurred as a sampler's are")
    max_blur_sigma: float = Field(1.0, gt=0, description="blur sigma is uniform up to this (pixels)")
    max_noise: float = Field(0.1, ge=0, description="pixel noise std is uniform up to this (images in [-1, 1])")
    split_seed: int = 0


class SortingDataConfig(Section):
    """The digit-sorting world of the tiny dLLMs (diffrl.envs.sorting): `length` digits, then their sorted answer."""

    source: Literal["sorting"] = "sorting"
    length: int = Field(32, ge=2, description="digits per problem (the answer's length)")
    heldout: int = Field(200, ge=1, description="held-out problems (never trained on) scored at each eval")
    split_seed: int = 0


class SupervisedLearnerConfig(Section):
    """The data-parallel DeepSpeed learner ranks of the supervised kinds (pretrain, adversarial) and their optimizer
    schedule; each kind adds its objective's settings."""

    num_workers: int = Field(1, ge=1, description="data-parallel DeepSpeed ranks")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    batch_size: int = Field(128, ge=1, description="samples per optimizer step, over all ranks")
    micro_batch_size: int = Field(128, ge=1, description="samples per forward/backward on a rank")
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(5e-5, ge=0, description="cosine decay ends here")
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(300, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    zero_stage: Literal[0, 1, 2] = 0
    sync_bucket_mb: float = Field(64.0, gt=0)


class PretrainLearnerConfig(SupervisedLearnerConfig):
    algorithm: Literal["flow_matching_x0", "masked_diffusion", "block_diffusion", "preference_contrastive"] = Field(
        "flow_matching_x0", description="the objective: x0-prediction flow matching of the denoiser and the text "
        "encoder together (tiny_t2i); masked_diffusion (tiny_dllm); block_diffusion (tiny_dllm_v2); "
        "preference_contrastive (scenes_pref)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights; the EMA is evaluated and saved")
    ema_start: int = Field(200, ge=0, description="the EMA copies the weights until this step")
    pair_weight: float = Field(0.0, ge=0, description="preference_contrastive only: weight of PickScore's two-image "
                               "term (true vs one-attribute-changed image, per caption) beside the batch softmaxes")


class EvalWorkersConfig(Section):
    num_workers: int = Field(1, ge=1, description="rollout (or dLLM decode) workers sampling the held-out eval")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    reward_cpus: float = Field(0.5, gt=0, description="CPUs of the GenEval-shapes reward worker")
    batch_size: int = Field(64, ge=1)
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="how a dLLM decodes the held-out "
                                 "problems (the LLaDA baseline by default)")


class PretrainTrainerConfig(TrainerBase):
    steps: int = Field(5000, ge=0)
    eval_every: int = Field(1000, ge=0)
    eval_seeds_per_prompt: int = Field(8, ge=1)
    sample_steps: int = Field(10, ge=1, description="ODE steps of the held-out samples")
    sample_grid_prompts: int = Field(8, ge=1)
    eval_label: str | None = Field(None, description="None: the data's own (GenEval-shapes / GenEval-scenes "
                                                     "strict, sorting exact match)")


class PretrainJobConfig(JobConfig):
    kind: Literal["pretrain"] = "pretrain"
    INPUT_PATHS: ClassVar[dict[str, str]] = {"model.path": "local"}
    # A resumed run may change its length, cadence, logging, cluster and resources; not the recipe.
    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE + (
        "learner.cpus_per_worker", "learner.gpus_per_worker", "learner.resources", "eval.",
    )

    model: PretrainModelConfig = PretrainModelConfig()
    data: ShapesDataConfig | ScenesDataConfig | ScenesPairsDataConfig | SortingDataConfig = Field(
        default_factory=ShapesDataConfig, discriminator="source")
    learner: PretrainLearnerConfig = PretrainLearnerConfig()
    eval: EvalWorkersConfig = EvalWorkersConfig()
    trainer: PretrainTrainerConfig = PretrainTrainerConfig()

    @model_validator(mode="after")
    def _check(self) -> PretrainJobConfig:
        if self.learner.batch_size % self.learner.num_workers:
            raise ValueError(f"learner.num_workers={self.learner.num_workers} must divide learner.batch_size="
                             f"{self.learner.batch_size}")
        wanted = MODEL_OBJECTIVE[self.model.name]
        if self.learner.algorithm != wanted:
            raise ValueError(f"learner.algorithm={self.learner.algorithm} does not train model.name="
                             f"{self.model.name}; use {wanted}")
        if self.data.source not in MODEL_DATA[self.model.name]:
            raise ValueError(f"data.source={self.data.source} is not data for model.name={self.model.name} "
                             f"(tiny_t2i trains on shapes or scenes, the tiny dLLMs on sorting, scenes_pref on "
                             f"scenes_pairs)")
        if self.data.source == "sorting" and self.eval.decode.gen_length != self.data.length:
            raise ValueError(f"eval.decode.gen_length={self.eval.decode.gen_length} must equal data.length="
                             f"{self.data.length} (the answer's length)")
        if self.trainer.eval_label is None:  # written into __dict__: no re-validation for a derived default
            from diffrl.envs.worlds import LABELS

            label = {"sorting": "sorting exact match", "scenes_pairs": "pair ranking accuracy"}.get(
                self.data.source, f"{LABELS.get(self.data.source)} strict")
            self.trainer.__dict__["eval_label"] = label
        if self.learner.min_lr > self.learner.lr:
            raise ValueError(f"learner.min_lr={self.learner.min_lr} exceeds learner.lr={self.learner.lr}")
        return self
