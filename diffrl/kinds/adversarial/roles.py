"""The adversarial job's roles: N data-parallel DeepSpeed learner ranks (the same LearnerWorker as RL and
pretraining, with the `adversarial` objective), rollout workers that sample the held-out prompts with the EMA weights
at each eval NFE, and (shapes world) a GenEval-shapes reward worker."""

from __future__ import annotations

from diffrl.kinds.adversarial.config import AdversarialJobConfig
from diffrl.kinds.pretrain.roles import LEARNER, REWARD, ROLLOUT, eval_reward
from diffrl.platform.roles import RoleSpec


def eval_rollout_config(cfg: AdversarialJobConfig) -> dict:
    """Full-precision deterministic ODE sampling (each eval passes its NFE)."""
    return {"num_steps": cfg.eval.nfe[0], "sampler": "ode", "noise_level": 0.0, "sde_window": 0,
            "guidance_scale": 1.0, "precision": "fp32", "quant_backend": "auto", "quant_skip": None,
            "quant_min_features": 16, "batch_size": cfg.eval.batch_size}


def learner_config(cfg: AdversarialJobConfig) -> dict:
    """The learner's settings; its schedules count optimizer steps (adv_steps per minibatch)."""
    return {**cfg.learner.model_dump(), "total_steps": cfg.trainer.steps * cfg.learner.adversarial.adv_steps}


def adversarial_roles(cfg: AdversarialJobConfig) -> list[RoleSpec]:
    """learner (collective ranks), rollout, and reward0 for the shapes world, in set-up order."""
    model = {**cfg.model.model_dump(), "seed": cfg.seed}
    ranks = cfg.learner.num_workers
    per_rank = cfg.learner.batch_size // ranks
    specs = [
        RoleSpec("learner", LEARNER, tuple((rank, ranks, model, learner_config(cfg), per_rank) for rank in range(ranks)),
                 cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker, dict(cfg.learner.resources),
                 max_restarts=0, collective=True),
        RoleSpec("rollout", ROLLOUT, ((model, eval_rollout_config(cfg), False),) * cfg.eval.num_workers,
                 cfg.eval.cpus_per_worker, cfg.eval.gpus_per_worker, max_restarts=3),
    ]
    if cfg.data.source == "shapes":
        specs.append(RoleSpec("reward0", REWARD, (([eval_reward()],),), cfg.eval.reward_cpus, max_restarts=3,
                              label="reward 'geneval_shapes'"))
    return specs
