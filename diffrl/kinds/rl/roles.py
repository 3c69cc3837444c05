"""The RL job's roles: rollout workers, one reward group per reward, the DeepSpeed learner ranks and, under Sol-RL,
the low-precision exploration workers."""

from __future__ import annotations

from diffrl.kinds.rl.config import RewardConfig, RLJobConfig
from diffrl.kinds.rl.sync import WeightSync
from diffrl.platform.roles import RoleSpec
from diffrl.platform.runtime import Roles, start_roles
from diffrl.workers.objectives import objective_class

ROLLOUT = "diffrl.workers.rollout:RolloutWorker"
REWARD = "diffrl.workers.reward:RewardWorker"
LEARNER = "diffrl.workers.learner:LearnerWorker"


def reward_role(index: int) -> str:
    return f"reward{index}"


def reward_roles(reward: RewardConfig, backend: str) -> list[RoleSpec]:
    """reward0, reward1, ...: one group per reward of the job, each on its own resources (any kind with rewards).
    On Ray a reward's timeout_s is its group's call timeout (an overdue replica is restarted and the batch re-sent,
    so a hung call never runs beside its retry); in-process (backend: local) the worker times the call itself."""
    specs = []
    for index, spec in enumerate(reward.rewards):
        workers = spec.num_workers or reward.num_workers
        worker_spec = spec.model_dump()
        if backend == "ray":
            worker_spec["timeout_s"] = None
        specs.append(RoleSpec(
            reward_role(index), REWARD, (([worker_spec],),) * workers,
            spec.cpus_per_worker or reward.cpus_per_worker, spec.gpus_per_worker,
            dict(spec.resources if spec.resources is not None else reward.resources), reward.max_restarts,
            label=f"reward '{spec.name}'", runtime_env={"py_executable": spec.python} if spec.python else {},
            call_timeout_s=spec.timeout_s if backend == "ray" else None))
    return specs


def rl_roles(cfg: RLJobConfig) -> list[RoleSpec]:
    """rollout, reward0.. (one per reward of the job), learner and (Sol-RL) explore, in set-up order."""
    model, rollout, learner = cfg.model.model_dump(), cfg.rollout.model_dump(), cfg.learner.model_dump()
    store_trajectory = objective_class(cfg.learner.algorithm).trajectories  # Flow-GRPO trains on stored SDE steps
    specs = [RoleSpec("rollout", ROLLOUT, ((model, rollout, store_trajectory),) * cfg.rollout.num_workers,
                      cfg.rollout.cpus_per_worker, cfg.rollout.gpus_per_worker, dict(cfg.rollout.resources),
                      cfg.rollout.max_restarts)]
    specs += reward_roles(cfg.reward, cfg.backend)
    ranks = cfg.learner.num_workers
    samples_per_rank = cfg.rollout.prompts_per_step * cfg.rollout.group_size // ranks
    specs.append(RoleSpec("learner", LEARNER,
                          tuple((rank, ranks, model, learner, samples_per_rank, rollout) for rank in range(ranks)),
                          cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker, dict(cfg.learner.resources),
                          max_restarts=0, collective=True))
    if cfg.rollout.strategy == "sol":
        sol = cfg.rollout.sol
        explore = {**rollout, "precision": sol.explore_precision, "num_steps": sol.explore_steps, "sampler": "ode",
                   "grid": None, "sde_window": 0, "guidance_scale": sol.explore_guidance_scale}
        specs.append(RoleSpec("explore", ROLLOUT, ((model, explore, False),) * sol.explore_workers,
                              sol.explore_cpus_per_worker, sol.explore_gpus_per_worker, dict(sol.explore_resources),
                              cfg.rollout.max_restarts, colocate_with="rollout" if sol.colocate else None))
    return specs


class RLRoles:
    """The RL job's live groups by what they do, and their weight sync (which installs the inference groups'
    restore hooks). The controller, tests and benchmarks use it."""

    def __init__(self, roles: Roles, cfg: RLJobConfig) -> None:
        self.roles = roles
        self.rollout, self.learner, self.explore = roles["rollout"], roles["learner"], roles.get("explore")
        self.rewards = [roles[reward_role(i)] for i in range(len(cfg.reward.rewards))]
        self.sync = WeightSync(roles, cfg)

    @property
    def pools(self) -> list:
        return self.roles.pools

    def shutdown(self) -> None:
        self.roles.shutdown()


def start_rl_roles(cfg: RLJobConfig) -> RLRoles:
    """Start the RL roles outside a run (tests, benchmarks); `shutdown()` stops them."""
    return RLRoles(start_roles(cfg, rl_roles(cfg)), cfg)
