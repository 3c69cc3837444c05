"""Flow-GRPO and DiffusionNFT learners on real DeepSpeed engines, fed by a real rollout worker (in-process)."""

import pytest
import torch

from diffrl.algorithms.advantages import group_advantages
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.platform.runtime import file_rendezvous as new_rendezvous
from diffrl.platform.worker import LocalBackend, Placement, WorkerGroup
from diffrl.workers.batch import SampleRequest
from diffrl.workers.learner import LearnerWorker
from diffrl.workers.rollout import RolloutWorker

PROMPTS = ["a photo of a red circle", "a photo of two squares"]
REWARDS = torch.tensor([0.1, 0.9, 0.5, 0.2, 1.0, 0.0, 0.3, 0.6])


def job(algorithm: str, **rollout) -> RLJobConfig:
    return RLJobConfig(
        model={"path": None},
        rollout={"num_steps": 6, "prompts_per_step": 2, "group_size": 4, "batch_size": 8, **rollout},
        learner={"algorithm": algorithm, "micro_batch_size": 8, "lr": 1e-3, "awm": {"num_timesteps": 2},
                 "nft": {"num_timesteps": 2}},
    )


def rollout_batch(cfg: RLJobConfig):
    worker = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump(),
                           store_trajectory=cfg.learner.algorithm == "flow_grpo")
    worker.setup()
    out = worker.generate([SampleRequest(PROMPTS[i // 4], {}, i // 4, 70 + i) for i in range(8)])
    out.rewards = REWARDS.clone()
    out.advantages = group_advantages(out.rewards, out.group_ids, clip=5.0)
    return worker, out


def learner_step(cfg: RLJobConfig, batch, scratch):
    scratch.mkdir(parents=True, exist_ok=True)
    args = [(0, 1, cfg.model.model_dump(), cfg.learner.model_dump(), len(batch), cfg.rollout.model_dump())]
    group = WorkerGroup(LocalBackend(), LearnerWorker, args, Placement(num_cpus=1), "learner")
    try:
        group.run("setup", rendezvous=new_rendezvous(scratch))
        before = {k: v.clone() for k, v in group.run("get_weights")[0].tensors().items()}
        metrics = group.scatter_async("update", [batch], step=0).results()[0]
        payload = group.run("get_weights")[0]
        return metrics, before, payload.tensors(), payload.version
    finally:
        group.shutdown()


def moved(before, after) -> int:
    return sum(int(not torch.equal(before[k], after[k])) for k in before)


@pytest.mark.parametrize("sampler", ["sde", "cps"])
def test_flow_grpo_on_policy_ratio_is_exactly_one(sampler, tmp_path):
    cfg = job("flow_grpo", sampler=sampler)
    _, batch = rollout_batch(cfg)
    assert batch.latents.shape == (8, 5, 3, 30, 30) and batch.log_probs.shape == (8, 5)
    metrics, before, after, version = learner_step(cfg, batch, tmp_path)
    # The learner recomputes every stored step's log-prob from bit-identical inputs: ratio exactly 1, KL exactly 0.
    assert metrics["ratio_mean"] == 1.0
    assert metrics["approx_kl"] == 0.0 and metrics["clipfrac"] == 0.0
    assert metrics["kl"] == 0.0  # policy equals the reference before the first step
    assert moved(before, after) > 10 and version == 1


def test_flow_grpo_timestep_fraction_trains_a_subset(tmp_path):
    cfg = job("flow_grpo", sampler="sde")
    cfg.learner.flow_grpo.timestep_fraction = 0.4  # 2 of the 5 stored steps
    _, batch = rollout_batch(cfg)
    metrics, before, after, _ = learner_step(cfg, batch, tmp_path)
    assert metrics["approx_kl"] == 0.0 and moved(before, after) > 10


def test_fast_window_stores_only_window_steps():
    cfg = job("flow_grpo", sampler="sde", num_steps=8, sde_window=2)
    worker, batch = rollout_batch(cfg)
    assert batch.latents.shape[1] == 2 and batch.log_probs.shape == (8, 2)
    for row in range(8):
        start = int(batch.step_index[row, 0])
        assert batch.step_index[row].tolist() == [start, start + 1] and start + 2 <= 8 // 2
        # Before the window the sampler is the plain ODE: the stored input latent is the ODE trajectory's.
        expected = _ode_prefix(worker.model, worker._encode([batch.prompts[row]]), int(batch.seeds[row]), 8, start)
        torch.testing.assert_close(batch.latents[row, 0], expected[0], rtol=0, atol=1e-6)
    assert len(set(batch.step_index[:, 0].tolist())) > 1, "windows are drawn per sample seed"


def _ode_prefix(model, cond, seed, num_steps, upto):
    from diffrl.algorithms.flow_matching import ode_step, timestep_grid

    grid = timestep_grid(num_steps)
    x = model.initial_noise([seed])
    with torch.no_grad():
        for i in range(upto):
            v = model.velocity(x, torch.full((1,), float(grid[i])), cond)
            x = ode_step(x, v, float(grid[i]), float(grid[i + 1]))
    return x


def test_sde_rollouts_without_noise_equal_ode_rollouts():
    cfg = job("flow_grpo", sampler="sde", noise_level=0.0)
    _, sde = rollout_batch(cfg)
    cfg_ode = job("awm")
    _, ode = rollout_batch(cfg_ode)
    torch.testing.assert_close(sde.samples, ode.samples, rtol=0, atol=1e-6)


def test_nft_learner_step_moves_weights_with_old_policy_ema(tmp_path):
    cfg = job("nft")
    _, batch = rollout_batch(cfg)
    metrics, before, after, _ = learner_step(cfg, batch, tmp_path)
    assert metrics["kl"] == 0.0 and metrics["old_deviation"] == 0.0  # old policy = policy = reference at step 0
    assert torch.isfinite(torch.tensor(metrics["loss"])) and moved(before, after) > 10


def test_eval_ema_weights_lag_the_live_weights(tmp_path):
    cfg = job("awm")
    cfg.learner.eval_ema_decay = 0.9
    _, batch = rollout_batch(cfg)
    scratch = tmp_path / "ema"
    scratch.mkdir()
    args = [(0, 1, cfg.model.model_dump(), cfg.learner.model_dump(), 8, None)]
    group = WorkerGroup(LocalBackend(), LearnerWorker, args, Placement(num_cpus=1), "learner")
    try:
        group.run("setup", rendezvous=new_rendezvous(scratch))
        before = {k: v.clone() for k, v in group.run("get_weights")[0].tensors().items()}
        group.scatter_async("update", [batch], step=0).results()
        live = group.run("get_weights")[0].tensors()
        ema = group.get([group.call(0, "get_weights", ema=True)])[0].tensors()
    finally:
        group.shutdown()
    key = next(k for k in live if not torch.equal(live[k], before[k]))
    torch.testing.assert_close(ema[key], 0.9 * before[key] + 0.1 * live[key])


def test_lora_sync_moves_only_adapters_in_buckets_and_matches_the_learner(tmp_path):
    cfg = job("awm")
    cfg.model.lora.enabled = True
    cfg.learner.sync_bucket_mb = 0.01  # 10 KiB buckets: several buckets, far fewer than tensors
    worker, batch = rollout_batch(cfg)
    args = [(0, 1, cfg.model.model_dump(), cfg.learner.model_dump(), 8, None)]
    scratch = tmp_path
    group = WorkerGroup(LocalBackend(), LearnerWorker, args, Placement(num_cpus=1), "learner")
    try:
        group.run("setup", rendezvous=new_rendezvous(scratch))
        group.scatter_async("update", [batch], step=0).results()
        learner = group.handles[0]
        payload = learner.get_weights()
        assert payload.slots and all("lora_" in slot.name for slot in payload.slots)
        assert 1 < len(payload.buckets) < len(payload.slots)
        for index, bucket in enumerate(payload.buckets):  # within the limit, unless one tensor alone exceeds it
            members = [slot for slot in payload.slots if slot.bucket == index]
            assert bucket.numel() * bucket.element_size() <= 0.01 * 2**20 or len(members) == 1
        assert worker.load_weights(payload) == 1
        x, t = torch.randn(4, 3, 30, 30), torch.tensor([0.9, 0.6, 0.3, 0.1])
        cond = worker._encode(["a photo of a red circle"] * 4)
        with torch.no_grad():
            expected = learner.engine.module(x, t, cond)
            got = worker.model.velocity(x, t, cond)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert not torch.equal(got, learner.reference(x, t, cond))  # the sync changed the rollout policy
    finally:
        group.shutdown()
