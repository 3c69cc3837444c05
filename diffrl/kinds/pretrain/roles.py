"""The pretraining job's roles: N data-parallel DeepSpeed learner ranks (the same LearnerWorker as RL, with the
flow-matching or masked-diffusion objective), and for the held-out eval either rollout workers that sample the EMA
weights and a GenEval reward worker (tiny_t2i) or dLLM decode workers (the tiny dLLMs); the learned preference
reward (scenes_pref) is ranked on held-out pairs by the controller itself."""

from __future__ import annotations

from diffrl.envs.worlds import REWARDS
from diffrl.kinds.pretrain.config import PretrainJobConfig
from diffrl.models.dllm.presets import V2_BLOCK
from diffrl.platform.roles import RoleSpec

ROLLOUT = "diffrl.workers.rollout:RolloutWorker"
REWARD = "diffrl.workers.reward:RewardWorker"
LEARNER = "diffrl.workers.learner:LearnerWorker"
DECODE = "diffrl.workers.decode:DecodeWorker"


def eval_reward(world: str = "shapes") -> dict:
    """The held-out reward of an image world: its GenEval rules (geneval_shapes or geneval_scenes)."""
    return {"name": REWARDS[world], "weight": 1.0, "kwargs": {}, "retries": 2, "timeout_s": None, "backoff_s": 0.5}


def eval_rollout_config(cfg: PretrainJobConfig) -> dict:
    """The rollout workers' settings: full-precision deterministic ODE sampling with sample_steps steps."""
    return {"num_steps": cfg.trainer.sample_steps, "sampler": "ode", "noise_level": 0.0, "sde_window": 0,
            "guidance_scale": 1.0, "precision": "fp32", "quant_backend": "auto", "quant_skip": None,
            "quant_min_features": 16, "batch_size": cfg.eval.batch_size}


def pretrain_roles(cfg: PretrainJobConfig) -> list[RoleSpec]:
    """learner (collective ranks), then rollout and reward0 (image eval) or decode (dLLM eval), in set-up order."""
    model = {**cfg.model.model_dump(), "seed": cfg.seed, "lora": {"enabled": False}}
    if cfg.data.source in REWARDS:
        model["world"] = cfg.data.source  # a fresh tiny_t2i gets the world's vocabulary and image size
    learner = {**cfg.learner.model_dump(), "total_steps": cfg.trainer.steps}
    if cfg.model.name == "tiny_dllm_v2":
        learner["block_length"] = V2_BLOCK
    ranks = cfg.learner.num_workers
    per_rank = cfg.learner.batch_size // ranks
    specs = [
        RoleSpec("learner", LEARNER, tuple((rank, ranks, model, learner, per_rank) for rank in range(ranks)),
                 cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker, dict(cfg.learner.resources),
                 max_restarts=0, collective=True),
    ]
    if cfg.data.source == "scenes_pairs":  # the preference model's eval ranks held-out pairs on the driver
        return specs
    if cfg.data.source == "sorting":
        decode = ((model, cfg.eval.decode.model_dump(), cfg.eval.batch_size),) * cfg.eval.num_workers
        return specs + [RoleSpec("decode", DECODE, decode, cfg.eval.cpus_per_worker, cfg.eval.gpus_per_worker,
                                 max_restarts=3)]
    return specs + [
        RoleSpec("rollout", ROLLOUT, ((model, eval_rollout_config(cfg), False),) * cfg.eval.num_workers,
                 cfg.eval.cpus_per_worker, cfg.eval.gpus_per_worker, max_restarts=3),
        RoleSpec("reward0", REWARD, (([eval_reward(cfg.data.source)],),), cfg.eval.reward_cpus, max_restarts=3,
                 label=f"reward '{REWARDS[cfg.data.source]}'"),
    ]
