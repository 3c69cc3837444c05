"""Weight sync by collective broadcast (gloo on CPU; the same code runs NCCL on GPUs) on a real Ray cluster."""

import ray
import torch

from diffrl.models.tiny_t2i import TinyT2I
from diffrl.kinds import parse_job
from diffrl.kinds.rl.controller import compute_advantages
from diffrl.kinds.rl.data import prompt_splits, step_requests
from diffrl.kinds.rollouts import generate_and_score
from diffrl.kinds.rl.roles import start_rl_roles as start_roles


def sync_once_and_compare(cfg) -> tuple[dict, object]:
    """One RL update, one broadcast sync; asserts every rollout worker holds exactly the learner's weights and
    returns them with the roles (the caller shuts them down)."""
    def max_difference(worker, expected):
        state = worker.model.denoiser.state_dict()
        return max(float((state[k].cpu() - v.cpu()).abs().max()) for k, v in expected.items())

    roles = start_roles(cfg)
    try:
        batch = generate_and_score(roles.rollout, roles.rewards, step_requests(prompt_splits(cfg)[0], cfg, 0))
        batch.advantages = compute_advantages(batch, cfg)
        roles.learner.scatter_async("update", [batch], step=0).results()
        assert roles.sync.sync() == 1
        learner = roles.learner.run("get_weights")[0].tensors()
        for handle in roles.rollout.handles:
            assert ray.get(handle.__ray_call__.remote(max_difference, learner)) == 0.0
    except BaseException:
        roles.shutdown()
        raise
    return learner, roles


def test_broadcast_sync_reaches_every_rollout_worker_exactly(ray_cluster, tmp_path):
    cfg = parse_job({"output_dir": str(tmp_path),
                     "rollout": {"num_workers": 2, "cpus_per_worker": 0.5, "prompts_per_step": 2, "group_size": 4},
                     "learner": {"sync_backend": "broadcast", "sync_bucket_mb": 1.0, "awm": {"num_timesteps": 2}}})
    learner, roles = sync_once_and_compare(cfg)
    try:
        assert len(roles.learner.run("weight_layout")[0].buckets) > 1  # 1 MB buckets: several broadcasts
        assert [(h["ready"], h["weight_version"]) for h in roles.rollout.run("health")] == [(True, 1)] * 2
        # the update moved the weights away from the shipped base, so a missed sync would show above
        base = TinyT2I.from_pretrained("builtin:shapes_base").denoiser.state_dict()
        assert sum(not torch.equal(base[k], learner[k]) for k in learner) > 10
    finally:
        roles.shutdown()
