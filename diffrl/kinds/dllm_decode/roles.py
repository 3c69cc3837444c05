"""The dLLM decoding job's role: N decode workers with the same model and decoding policy, data-parallel over
the prompts."""

from __future__ import annotations

from diffrl.kinds.dllm_decode.config import DllmDecodeJobConfig
from diffrl.platform.roles import RoleSpec

DECODE = "diffrl.workers.decode:DecodeWorker"


def dllm_decode_roles(cfg: DllmDecodeJobConfig) -> list[RoleSpec]:
    model = {**cfg.model.model_dump(), "seed": cfg.seed}
    w = cfg.workers
    args = ((model, cfg.decode.model_dump(), w.batch_size),) * w.num_workers
    return [RoleSpec("decode", DECODE, args, w.cpus_per_worker, w.gpus_per_worker, dict(w.resources), w.max_restarts)]
