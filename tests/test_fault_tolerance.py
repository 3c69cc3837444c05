"""Fault tolerance on a real Ray cluster: a rollout worker and a reward replica are killed (SIGKILL) while they hold a
shard; they are restarted, brought back to the current weights, and the step's results equal a clean run's."""

import contextlib
import os
import signal
import threading
import time

import psutil
import pytest
import ray
import torch

from diffrl.kinds import load_job
from diffrl.kinds.rl.controller import compute_advantages
from diffrl.kinds.rl.data import prompt_splits, step_requests
from diffrl.kinds.rollouts import generate_and_score
from diffrl.kinds.rl.roles import start_rl_roles as start_roles

JOB = "configs/shapes_awm.yaml"


def pids(group) -> list[int]:
    return ray.get([handle.__ray_call__.remote(lambda self: os.getpid()) for handle in group.handles])


def kill_when_busy(group, method: str, found: list, timeout_s: float = 60.0) -> threading.Thread:
    """A thread that SIGKILLs the first of `group`'s actor processes seen executing `method` (Ray titles a busy
    actor process ray::Class.method)."""
    candidates = pids(group)

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid in candidates:
                try:
                    busy = any(method in part for part in psutil.Process(pid).cmdline())
                except psutil.Error:
                    continue
                if busy:
                    os.kill(pid, signal.SIGKILL)
                    found.append(pid)
                    return
            time.sleep(0.002)  # reward shards score in milliseconds: poll often enough to catch one

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def run_with_a_decode_kill(cfg, role_specs, controller):
    """Start the job's roles, SIGKILL a decode worker while it decodes, run the kind's controller to the end;
    returns (the controller's summary, the decode group's restart count)."""
    from diffrl.platform.runs import RunLog
    from diffrl.platform.runtime import RunContext, start_roles as start_kind_roles

    roles = start_kind_roles(cfg, role_specs)
    cfg.run_dir.mkdir(parents=True)
    try:
        killed: list[int] = []
        watcher = kill_when_busy(roles["decode"], "DecodeWorker.decode", killed)
        log = RunLog(cfg.run_dir, cfg)
        summary = controller(RunContext(cfg, roles, cfg.run_dir, log, None, echo=lambda _: None))
        log.close()
        watcher.join(timeout=5)
        assert killed, "the kill must land while a decode call was in flight"
        return summary, sum(roles["decode"].restarts)
    finally:
        roles.shutdown()


def test_killed_rollout_and_reward_workers_lose_and_duplicate_nothing(ray_cluster):
    cfg = load_job(JOB, ["rollout.num_workers=2", "rollout.cpus_per_worker=1", "rollout.prompts_per_step=8",
                         "rollout.group_size=16",
                         "rollout.batch_size=32", "reward.num_workers=2", "learner.lr=1e-3"])
    train, _ = prompt_splits(cfg)
    roles = start_roles(cfg)
    try:
        # One real update first, so a restarted worker must receive trained weights (not the base it loads itself).
        first = generate_and_score(roles.rollout, roles.rewards, step_requests(train, cfg, 0))
        first.advantages = compute_advantages(first, cfg)
        roles.learner.scatter_async("update", [first], step=0).results()
        assert roles.sync.sync() == 1

        requests = step_requests(train, cfg, 1)
        clean = generate_and_score(roles.rollout, roles.rewards, requests)
        killed: list[int] = []
        watchers = [kill_when_busy(roles.rollout, "RolloutWorker.generate", killed),
                    kill_when_busy(roles.rewards[0], "RewardWorker.score", killed)]
        faulty = generate_and_score(roles.rollout, roles.rewards, requests)
        for watcher in watchers:
            watcher.join(timeout=5)
        assert len(killed) == 2, "both kills must land while a shard was in flight"
        assert sum(roles.rollout.restarts) == 1 and sum(g for group in roles.rewards for g in group.restarts) == 1
        assert faulty.prompts == clean.prompts and torch.equal(faulty.seeds, clean.seeds)
        assert len(faulty) == len(requests) == 128
        assert (faulty.images == clean.images).all(), "restarted workers must sample with the current weights"
        assert torch.equal(faulty.rewards, clean.rewards)
        assert faulty.reward_details == clean.reward_details
        assert torch.equal(faulty.weight_version, clean.weight_version)  # every row from weights version 1
        healths = roles.rollout.run("health")
        assert [h["weight_version"] for h in healths] == [1, 1]

        # A worker that dies while idle (between steps) comes back on its next call: its restarted process answers
        # NotReady, is restored, and the step is again identical to the clean one.
        idle = pids(roles.rollout)[1]
        os.kill(idle, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(idle).wait(timeout=30)  # gone before the next call
        again = generate_and_score(roles.rollout, roles.rewards, requests)
        assert roles.rollout.restarts[1] >= 1 and sum(roles.rollout.restarts) == 2
        assert (again.images == clean.images).all() and torch.equal(again.rewards, clean.rewards)
    finally:
        roles.shutdown()


def test_a_worker_past_its_restarts_fails_with_its_name(ray_cluster):
    cfg = load_job(JOB, ["rollout.max_restarts=0", "rollout.prompts_per_step=8", "rollout.group_size=16",
                         "rollout.batch_size=32"])
    train, _ = prompt_splits(cfg)
    roles = start_roles(cfg)
    try:
        killed: list[int] = []
        watcher = kill_when_busy(roles.rollout, "RolloutWorker.generate", killed)
        try:
            generate_and_score(roles.rollout, roles.rewards, step_requests(train, cfg, 0))
        except Exception as err:  # noqa: BLE001
            assert "rollout worker 0 died: no restarts left (0 allowed" in str(err)
        else:
            raise AssertionError("a rollout worker with no restarts left must fail the step")
        watcher.join(timeout=5)
        assert killed
    finally:
        roles.shutdown()



@pytest.mark.slow  # restarts under object-store sync stay in make test (above)
def test_restart_under_broadcast_sync_forms_the_group_again(ray_cluster):
    """A receiver of the weight-broadcast group dies mid-step: it comes back with the current weights (through the
    object store), the broadcast group is formed again before the next sync, and every worker gets the update."""
    cfg = load_job(JOB, ["rollout.num_workers=2", "rollout.cpus_per_worker=1", "rollout.prompts_per_step=8",
                         "rollout.group_size=16",
                         "rollout.batch_size=32", "learner.sync_backend=broadcast", "learner.lr=1e-3"])
    train, _ = prompt_splits(cfg)
    roles = start_roles(cfg)
    try:
        assert roles.sync.channel_generation == 1
        killed: list[int] = []
        watcher = kill_when_busy(roles.rollout, "RolloutWorker.generate", killed)
        batch = generate_and_score(roles.rollout, roles.rewards, step_requests(train, cfg, 0))
        watcher.join(timeout=5)
        assert killed and sum(roles.rollout.restarts) == 1 and roles.sync.channel_stale
        batch.advantages = compute_advantages(batch, cfg)
        roles.learner.scatter_async("update", [batch], step=0).results()
        assert roles.sync.sync() == 1
        assert roles.sync.channel_generation == 2 and not roles.sync.channel_stale
        assert [h["weight_version"] for h in roles.rollout.run("health")] == [1, 1]
        # Both workers now sample identically from the broadcast weights: the same request gives the same image.
        request = step_requests(train, cfg, 1)[:1]
        images = [roles.rollout.get([roles.rollout.call(rank, "generate", request)])[0].images for rank in (0, 1)]
        assert (images[0] == images[1]).all()
    finally:
        roles.shutdown()
