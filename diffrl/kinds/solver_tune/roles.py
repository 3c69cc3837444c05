"""The solver-tuning job's roles: rollout workers that sample every candidate (data-parallel over seeds) and one
reward group per reward of the job."""

from __future__ import annotations

from diffrl.kinds.rl.roles import ROLLOUT, reward_roles
from diffrl.kinds.solver_tune.config import SolverTuneJobConfig
from diffrl.platform.roles import RoleSpec


def rollout_settings(cfg: SolverTuneJobConfig) -> dict:
    """The rollout workers' settings; each call names its sampler, options and grid."""
    return {"num_steps": cfg.tune.reference_steps, "sampler": "ode", "noise_level": 0.0, "sde_window": 0,
            "grid": None, "sa_solver": None, "guidance_scale": cfg.rollout.guidance_scale,
            "precision": cfg.rollout.precision, "quant_backend": "auto", "quant_skip": None, "quant_min_features": 16,
            "batch_size": cfg.rollout.batch_size}


def solver_tune_roles(cfg: SolverTuneJobConfig) -> list[RoleSpec]:
    """rollout, then reward0.. (one per reward), in set-up order."""
    model = cfg.model.model_dump()
    specs = [RoleSpec("rollout", ROLLOUT, ((model, rollout_settings(cfg), False),) * cfg.rollout.num_workers,
                      cfg.rollout.cpus_per_worker, cfg.rollout.gpus_per_worker, dict(cfg.rollout.resources),
                      cfg.rollout.max_restarts)]
    return specs + reward_roles(cfg.reward, cfg.backend)
