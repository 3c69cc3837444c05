"""Weight sync from learner rank 0 to every group holding an inference copy of the policy (rollout, Sol-RL's
explore), and the restore hook that brings a restarted inference worker up to date before its lost call is re-sent.

Two transports (learner.sync_backend): one bucketed payload through the object store, or a collective broadcast
from learner rank 0 (NCCL on GPUs, gloo on CPU) over a group formed again after any restart."""

from __future__ import annotations

from typing import Any

from diffrl.kinds.rl.config import RLJobConfig
from diffrl.platform.runtime import Roles
from diffrl.platform.worker import WorkerGroup


class WeightSync:
    """Which weights the inference groups hold ("policy", or "ema" during an EMA eval) and the state of the
    broadcast group; installs the inference groups' restore hooks on construction."""

    def __init__(self, roles: Roles, cfg: RLJobConfig) -> None:
        self.roles, self.cfg = roles, cfg
        self.learner = roles["learner"]
        self.inference = [roles[name] for name in ("rollout", "explore") if roles.get(name) is not None]
        self.serving = "policy"
        self.channel_generation = 0  # the broadcast group is formed again (next generation) after a restart
        self.channel_stale = False
        for group in self.inference:
            group.restore = self._restore_inference
        if cfg.learner.sync_backend == "broadcast":
            self.open_channel()

    def _restore_inference(self, group: WorkerGroup, rank: int) -> None:
        """Set up the restarted worker, load the weights the other workers serve (the learner's current policy, or
        its eval EMA during an EMA eval) and, under broadcast sync, form the broadcast group again before the next
        sync."""
        group.get([group.setup_worker(rank)])
        payload = self.learner_weights(ema=self.serving == "ema")
        group.get([group.call(rank, "load_weights", payload)])
        self.channel_stale = self.cfg.learner.sync_backend == "broadcast"

    def learner_weights(self, ema: bool = False) -> Any:
        """A future of learner rank 0's weight payload. Under ZeRO-3 (gathering is collective) every rank is asked
        and the other ranks' calls are awaited; only rank 0's payload travels on."""
        if self.cfg.learner.zero_stage != 3 or ema:
            return self.learner.call(0, "get_weights", ema=ema)
        futures = self.learner.broadcast("get_weights", ema=ema)
        self.learner.get(futures[1:])
        return futures[0]

    def sync(self, ema: bool = False) -> int:
        """Send learner rank 0's trainable weights (or its eval EMA's) to every inference worker; returns the
        version."""
        self.serving = "ema" if ema else "policy"
        if self.cfg.learner.sync_backend == "broadcast" and not ema:
            if self.channel_stale:
                self.open_channel()
            futures = [self.learner.call(0, "broadcast_weights")]
            futures += [f for group in self.inference for f in group.broadcast("receive_weights")]
            return int(self.learner.get(futures)[1])
        payload = self.learner_weights(ema)
        versions = [version for group in self.inference for version in group.each("load_weights", payload)]
        return int(versions[0])

    def open_channel(self) -> None:
        """Form the weight-broadcast group: learner rank 0 (rank 0) and every inference worker. All members join
        at once (the group's construction is collective)."""
        layout = self.learner.get([self.learner.call(0, "weight_layout")])[0]
        receivers = [(group, index) for group in self.inference for index in range(len(group))]
        world = 1 + len(receivers)
        self.channel_generation += 1
        self.channel_stale = False
        store = self.roles.rendezvous(self.learner, f"weights_store_{self.channel_generation}")
        futures = [self.learner.call(0, "open_weight_channel", store, world)]
        futures += [group.call(index, "open_weight_channel", store, rank, world, layout)
                    for rank, (group, index) in enumerate(receivers, start=1)]
        self.learner.get(futures)
