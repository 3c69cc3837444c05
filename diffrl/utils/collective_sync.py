"""Weight sync by collective broadcast: learner rank 0 broadcasts its bucketed trainable tensors to every inference
worker over a process group of their own (NCCL when every member has a GPU, gloo otherwise).

On a one-node cluster the group meets through a torch.distributed FileStore in the run's scratch directory (no TCP
store listening on any interface) and its connections are pinned to loopback; across nodes it meets through a
TCPStore hosted by learner rank 0 on its node's address (`store_url` tcp://HOST:PORT). The group is independent of the learners' DeepSpeed group, as verl and OpenRLHF keep a separate weight-update
group. The bucket layout (names, shapes, dtypes, offsets) is fixed for a run, so it travels once through the object
store when the channel opens; each sync then moves only the flat buckets. `learner.sync_backend: broadcast` selects
it; the object-store path (`weight_sync.py`) is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from diffrl.utils.net import pin_loopback_interfaces
from diffrl.utils.weight_sync import TensorSlot, WeightPayload


@dataclass(frozen=True)
class BucketLayout:
    """What a receiver needs to allocate the buckets: per bucket (numel, dtype name), and the tensor slots."""

    buckets: tuple[tuple[int, str], ...]
    slots: tuple[TensorSlot, ...]

    @staticmethod
    def of(payload: WeightPayload) -> BucketLayout:
        return BucketLayout(tuple((b.numel(), str(b.dtype).removeprefix("torch.")) for b in payload.buckets),
                            tuple(payload.slots))


def open_store(url: str, rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """file:///path: a FileStore (this node only; gloo/NCCL then pinned to loopback). tcp://HOST:PORT: a TCPStore,
    served by rank 0 on HOST (a cluster: connections use the node's network, GLOO/NCCL_SOCKET_IFNAME choose it)."""
    if url.startswith("tcp://"):
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        return dist.TCPStore(host, int(port), world_size, is_master=rank == 0, timeout=timeout)
    pin_loopback_interfaces()
    return dist.FileStore(url.removeprefix("file://"), world_size)


class BroadcastChannel:
    """One member of the weight-broadcast group; rank 0 is the sender (learner rank 0)."""

    def __init__(self, store_url: str, rank: int, world_size: int, device: torch.device, timeout_s: float = 600) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        timeout = timedelta(seconds=timeout_s)
        store = open_store(store_url, rank, world_size, timeout)
        if device.type == "cuda":
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, dist.ProcessGroupNCCL.Options())
            self.backend = "nccl"
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
            self.backend = "gloo"

    def _broadcast(self, tensor: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()

    def send(self, payload: WeightPayload) -> None:
        if self.rank != 0:
            raise RuntimeError("only rank 0 (learner rank 0) sends weights")
        self._broadcast(torch.tensor([payload.version], dtype=torch.long, device=self.device))
        for bucket in payload.buckets:
            self._broadcast(bucket.to(self.device).contiguous())

    def receive(self, layout: BucketLayout) -> WeightPayload:
        version = torch.zeros(1, dtype=torch.long, device=self.device)
        self._broadcast(version)
        buckets = []
        for numel, dtype in layout.buckets:
            bucket = torch.empty(numel, dtype=getattr(torch, dtype), device=self.device)
            self._broadcast(bucket)
            buckets.append(bucket)
        return WeightPayload(version=int(version.item()), buckets=buckets, slots=list(layout.slots))
