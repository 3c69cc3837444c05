"""The dLLM decoding job's typed config: the model (the shipped tiny dLLMs, or a local LLaDA / Dream / Fast-dLLM v2
checkpoint), the prompts file, how to decode (the LLaDA baseline or the Fast-dLLM accelerations) and the decode
workers that share the prompts."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from diffrl.models.dllm.generate import DecodeOptions
from diffrl.platform.config import BASE_RESUMABLE, RESOURCES_HELP, JobConfig, Resources, Section, TrainerBase


class DecodeConfig(Section):
    """One decoding policy (diffrl.models.dllm.generate): rule top_k is LLaDA's low-confidence remasking with an
    even number of tokens per step; threshold and factor are Fast-dLLM's parallel decoding; cache prefix / dual
    are Fast-dLLM's caches; sub_block_length > 0 with a block-causal model is Fast-dLLM v2's block decoding."""

    gen_length: int = Field(32, ge=1, description="answer tokens generated per prompt")
    block_length: int = Field(8, ge=1, description="semi-autoregressive block length (divides gen_length)")
    steps: int = Field(32, ge=1, description="top_k: total steps over the answer (gen_length = one token a step)")
    rule: Literal["top_k", "threshold", "factor"] = "top_k"
    threshold: float = Field(0.9, gt=0, le=1, description="threshold rule: commit every token this confident")
    factor: float = Field(1.0, gt=0, description="factor rule: commit the largest n with (n+1)(1-c_n) <= factor")
    cache: Literal["none", "prefix", "dual"] = "none"
    sub_block_length: int = Field(0, ge=0, description="0: a block is one unit; else decode sub-blocks in turn")
    temperature: float = Field(0.0, ge=0, description="0 is greedy; > 0 samples with a per-prompt seed")

    @model_validator(mode="after")
    def _check(self) -> DecodeConfig:
        self.options()
        return self

    def options(self) -> DecodeOptions:
        return DecodeOptions(**self.model_dump())


class DecodeModelConfig(Section):
    name: Literal["dllm"] = Field("dllm", description="a masked-diffusion LM checkpoint (native, LLaDA, Dream or "
                                                     "Fast-dLLM v2 format)")
    path: str = Field("builtin:sorting_dllm", description="builtin:NAME (shipped) or a local checkpoint directory")
    dtype: Literal["fp32", "bf16"] = "fp32"


class PromptsConfig(Section):
    prompts: str = Field(description="JSON lines: {\"prompt\": str, \"reference\": str (optional)} per line")
    limit: int | None = Field(None, ge=1, description="decode only the first N prompts")


class DecodeWorkersConfig(Section):
    num_workers: int = Field(1, ge=1, description="decode workers; prompts are split between them")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    max_restarts: int = Field(3, ge=0, description="restarts of a dead decode worker (its prompts are re-sent)")
    batch_size: int = Field(16, ge=1, description="sequences decoded together inside a worker")
    chunk_size: int = Field(64, ge=1, description="prompts per call to a worker (the unit re-sent after a death)")


class DecodeTrainerConfig(TrainerBase):
    steps: int = Field(0, ge=0, description="unused by dllm_decode (one pass over the prompts)")


class DllmDecodeJobConfig(JobConfig):
    kind: Literal["dllm_decode"] = "dllm_decode"
    INPUT_PATHS: ClassVar[dict[str, str]] = {"model.path": "local", "data.prompts": "file"}
    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE + ("workers.",)

    model: DecodeModelConfig = DecodeModelConfig()
    data: PromptsConfig
    decode: DecodeConfig = DecodeConfig()
    workers: DecodeWorkersConfig = DecodeWorkersConfig()
    trainer: DecodeTrainerConfig = DecodeTrainerConfig()

    @model_validator(mode="after")
    def _check(self) -> DllmDecodeJobConfig:
        """The prompts file is read before any worker starts (the model directory: the kind's check, where the job
        runs)."""
        from diffrl.kinds.dllm_decode.prompts import read_prompts

        read_prompts(self.data.prompts, self.data.limit)
        return self
