"""The adversarial-training job's typed config: the model to fine-tune (the shipped shapes base by default), the data
source (the shapes world's renders, or a folder of images), the DeepSpeed learner ranks with the free-AT settings,
and the periodic eval of few-step sample quality and of robustness."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from diffrl.kinds.pretrain.config import ShapesDataConfig, SupervisedLearnerConfig
from diffrl.kinds.rl.config import ModelConfig
from diffrl.platform.config import BASE_RESUMABLE, JobConfig, Section, TrainerBase


class ImageFolderDataConfig(Section):
    """Real data: every .png/.jpg/.jpeg/.webp under `path`, resized to the model's resolution; captions from
    `captions` (a JSON-lines file of {"file": name relative to path, "prompt": text}) or, without it, the empty
    prompt (unconditional fine-tuning)."""

    source: Literal["image_folder"] = "image_folder"
    path: str = Field(..., description="directory of training images")
    captions: str | None = Field(None, description="JSON-lines captions file; None trains unconditionally")
    heldout: int = Field(64, ge=2, description="images held out (never trained on) as the real set of the Frechet "
                                               "distance and the robustness eval")
    prompt_dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_files(self) -> ImageFolderDataConfig:
        from diffrl.kinds.adversarial.data import list_images, read_captions

        files = list_images(self.path)
        if len(files) <= self.heldout:
            raise ValueError(f"data.path: {self.path} holds {len(files)} images; data.heldout={self.heldout} "
                             f"leaves none to train on")
        if self.captions is not None:
            read_captions(self.path, self.captions)
        return self


class AdversarialSection(Section):
    """Free adversarial training of the denoiser's input (kugwzk/AT_Diff's defaults)."""

    prediction: Literal["x0", "velocity", "epsilon"] = Field(
        "x0", description="the parameterization trained: x0 (the built-in model's own), velocity (the diffusers flow "
        "models') or epsilon; the perturbed target keeps implying the clean sample in each")
    adv_steps: int = Field(3, ge=1, description="ascent steps A per minibatch, each also an optimizer step; 1 is "
                                               "standard fine-tuning")
    adv_lr: float = Field(0.1, ge=0, description="ascent step alpha (L2 length of each delta step)")
    adv_max_norm: float = Field(0.1, ge=0, description="eta: delta stays in the L2 ball of radius eta * sqrt(D)")
    min_t: float = Field(0.0, ge=0, lt=1, description="timesteps are drawn from U(0, 1) clamped to at least this "
                                                     "(velocity and epsilon targets divide by t)")
    trains: Literal["denoiser", "model"] = Field("denoiser", description="denoiser, or model: the text encoder too")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights (updated every optimizer step); "
                                                             "the EMA is evaluated and saved")
    ema_start: int = Field(0, ge=0, description="the EMA copies the weights until this step")
    cd_steps: int = Field(18, ge=1, description="adversarial_consistency: N of the discretization t_min..1")
    cd_t_min: float = Field(2e-3, gt=0, lt=1, description="adversarial_consistency: the smallest time t_0")
    target_decay: float = Field(0.95, ge=0, lt=1, description="adversarial_consistency: EMA decay mu of the "
                                                               "target network")


class AdversarialLearnerConfig(SupervisedLearnerConfig):
    algorithm: Literal["adversarial", "adversarial_consistency"] = Field(
        "adversarial", description="adversarial: fine-tune the denoiser; adversarial_consistency: distil a "
        "consistency model from the frozen base (the teacher), with the same perturbation on the online input")
    # Fine-tuning defaults (warm-up and schedules count optimizer steps: adv_steps per minibatch).
    batch_size: int = Field(64, ge=1, description="samples per minibatch, over all ranks")
    micro_batch_size: int = Field(64, ge=1, description="samples per forward/backward on a rank")
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0, description="cosine decay ends here")
    lr_schedule: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    adversarial: AdversarialSection = AdversarialSection()


class AdversarialEvalConfig(Section):
    num_workers: int = Field(1, ge=1, description="rollout workers sampling the held-out prompts")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    reward_cpus: float = Field(0.5, gt=0, description="CPUs of the GenEval-shapes reward worker")
    batch_size: int = Field(64, ge=1)
    nfe: list[PositiveInt] = Field([5, 10], min_length=1, description="sampler steps (model calls) of the "
                                   "few-step sample-quality evals")
    seeds_per_prompt: int = Field(8, ge=1, description="held-out samples per prompt (GenEval-shapes and FD)")
    real_per_prompt: int = Field(8, ge=1, description="real renders per held-out prompt, the FD's reference set "
                                 "(the FD's estimate is biased upward with few samples: compare at equal counts)")
    robustness_samples: int = Field(64, ge=1, description="held-out images of the robustness eval")
    robustness_radii: list[NonNegativeFloat] = Field([0.0, 0.05, 0.1, 0.2, 0.4], min_length=1,
                                          description="perturbation sizes eta (L2 norm eta * sqrt(D))")
    robustness_times: list[Annotated[float, Field(gt=0, le=1)]] = Field([0.25, 0.5, 0.75], min_length=1,
                                                                        description="timesteps t of x_t, in (0, 1]")
    sampler: Literal["auto", "ode", "consistency"] = Field(
        "auto", description="sampler of the quality evals; auto: consistency for adversarial_consistency, else ode")
    attack: Literal["adversarial", "random"] = Field(
        "adversarial", description="perturbation direction: the error's gradient (one-step L2 attack) or random")
    sample_grid_prompts: int = Field(8, ge=1)


class AdversarialTrainerConfig(TrainerBase):
    steps: int = Field(200, ge=0, description="minibatches (each adv_steps optimizer steps)")
    eval_every: int = Field(100, ge=0)


class AdversarialJobConfig(JobConfig):
    kind: Literal["adversarial"] = "adversarial"
    INPUT_PATHS: ClassVar[dict[str, str]] = {"model.path": "local", "data.path": "file", "data.captions": "file"}
    # A resumed run may change its length, cadence, logging and resources; not the recipe, nor what the evals
    # measure (the eval history of the checkpoint would not compare).
    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE + (
        "learner.cpus_per_worker", "learner.gpus_per_worker", "learner.resources", "eval.num_workers",
        "eval.cpus_per_worker", "eval.gpus_per_worker", "eval.reward_cpus", "eval.batch_size",
        "eval.sample_grid_prompts",
    )

    model: ModelConfig = ModelConfig()
    data: ShapesDataConfig | ImageFolderDataConfig = Field(default_factory=ShapesDataConfig, discriminator="source")
    learner: AdversarialLearnerConfig = AdversarialLearnerConfig()
    eval: AdversarialEvalConfig = AdversarialEvalConfig()
    trainer: AdversarialTrainerConfig = AdversarialTrainerConfig()

    @model_validator(mode="after")
    def _check(self) -> AdversarialJobConfig:
        learner, adv = self.learner, self.learner.adversarial
        if learner.batch_size % learner.num_workers:
            raise ValueError(f"learner.num_workers={learner.num_workers} must divide learner.batch_size="
                             f"{learner.batch_size}")
        if learner.min_lr > learner.lr:
            raise ValueError(f"learner.min_lr={learner.min_lr} exceeds learner.lr={learner.lr}")
        if self.model.name != "tiny_t2i":
            # Training images become model-space samples by the adapter; only the built-in pixel-space model has
            # that path today (the diffusers models would need their VAE encoder in the data path).
            raise ValueError(f"model.name={self.model.name}: adversarial fine-tuning runs on tiny_t2i (pixel space) "
                             f"for now")
        if adv.prediction != "x0" and adv.min_t <= 0:
            raise ValueError(f"learner.adversarial.prediction={adv.prediction} divides by t: set "
                             f"learner.adversarial.min_t > 0 (e.g. 0.02)")
        if self.model.lora.enabled:
            raise ValueError("model.lora.enabled: adversarial training fine-tunes the full denoiser (LoRA adapters "
                             "are not supported by this kind)")
        if learner.algorithm == "adversarial_consistency" and (adv.trains != "denoiser" or adv.prediction != "x0"):
            raise ValueError("learner.algorithm=adversarial_consistency trains the denoiser's consistency function "
                             "(an x0 target): set learner.adversarial.trains=denoiser and prediction=x0")
        if self.model.path is None:
            raise ValueError("model.path: adversarial training fine-tunes trained weights (builtin:NAME or a "
                             "directory), got null")
        return self
