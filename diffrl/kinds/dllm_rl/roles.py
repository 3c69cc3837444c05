"""The dLLM RL job's roles: decode workers (rollouts and held-out eval), one reward group per reward (scoring
completions), and the DeepSpeed learner ranks."""

from __future__ import annotations

from diffrl.kinds.dllm_rl.config import DllmRLJobConfig
from diffrl.kinds.rl.roles import LEARNER, reward_roles
from diffrl.platform.roles import RoleSpec

DECODE = "diffrl.workers.decode:DecodeWorker"


def model_dict(cfg: DllmRLJobConfig) -> dict:
    return {**cfg.model.model_dump(), "seed": cfg.seed, "lora": {"enabled": False}}


def dllm_rl_roles(cfg: DllmRLJobConfig) -> list[RoleSpec]:
    """decode, reward0.., learner, in set-up order."""
    r = cfg.rollout
    specs = [RoleSpec("decode", DECODE, ((model_dict(cfg), r.decode.model_dump(), r.batch_size),) * r.num_workers,
                      r.cpus_per_worker, r.gpus_per_worker, dict(r.resources), r.max_restarts)]
    specs += reward_roles(cfg.reward, cfg.backend)
    ranks = cfg.learner.num_workers
    per_rank = r.prompts_per_step * r.group_size // ranks
    specs.append(RoleSpec("learner", LEARNER,
                          tuple((rank, ranks, model_dict(cfg), cfg.learner_dict(), per_rank) for rank in range(ranks)),
                          cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker, dict(cfg.learner.resources),
                          max_restarts=0, collective=True))
    return specs
