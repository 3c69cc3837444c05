"""Colocation on a real Ray cluster: roles named in ray.colocate share one placement group, worker i of each on
bundle i (the hybrid layout verl calls a shared resource pool), and an RL step runs on it."""

import pytest
import ray

from diffrl.kinds import load_job
from diffrl.platform.config import ConfigError
from diffrl.kinds.rl.controller import compute_advantages
from diffrl.kinds.rl.data import prompt_splits, step_requests
from diffrl.kinds.rollouts import generate_and_score
from diffrl.kinds.rl.roles import start_rl_roles as start_roles

JOB = "configs/shapes_awm.yaml"


def test_rollout_and_learner_share_one_pool(ray_cluster):
    cfg = load_job(JOB, ["ray.colocate=[[rollout, learner]]", "rollout.num_workers=2", "learner.num_workers=2",
                         "rollout.cpus_per_worker=0.5", "learner.cpus_per_worker=0.5", "rollout.prompts_per_step=2",
                         "rollout.group_size=4"])
    roles = start_roles(cfg)
    try:
        assert sorted(pool.name for pool in roles.pools) == ["reward0", "rollout+learner"]
        shared = next(pool for pool in roles.pools if pool.name == "rollout+learner")
        assert shared.bundles == [{"CPU": 1.0}, {"CPU": 1.0}]

        def where(worker):
            return ray.util.get_current_placement_group().id.hex()

        groups = {ray.get(h.__ray_call__.remote(where)) for h in [*roles.rollout.handles, *roles.learner.handles]}
        assert groups == {shared.group.id.hex()}
        train, _ = prompt_splits(cfg)
        batch = generate_and_score(roles.rollout, roles.rewards, step_requests(train, cfg, 0))
        batch.advantages = compute_advantages(batch, cfg)
        shards = [batch.select(list(range(0, 4))), batch.select(list(range(4, 8)))]
        roles.learner.scatter_async("update", shards, step=0).results()
        assert roles.sync.sync() == 1
    finally:
        roles.shutdown()


@pytest.mark.parametrize("groups,message", [
    ("[[rollout, critic]]", r"unknown role\(s\) \['critic'\]; this job's roles are \['rollout', 'reward0', 'learner'\]"),
    ("[[rollout]]", "each group needs two or more roles"),
    ("[[rollout, learner], [learner, reward0]]", "each role in one group only"),
])
def test_bad_colocation_is_refused_naming_the_key(groups, message):
    with pytest.raises(ConfigError, match=message):
        load_job(JOB, [f"ray.colocate={groups}"])
