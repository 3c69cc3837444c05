"""WorkerGroup on a real local Ray cluster (and in-process): placement, broadcast, scatter order."""

import os
import sys
import time

import pytest
import ray.cloudpickle

from diffrl.platform.ray_backend import PlacementTimeout, RayBackend, ResourcePool
from diffrl.platform.worker import LocalBackend, Placement, WorkerGroup, split_evenly

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class EchoWorker:
    def __init__(self, rank: int, delay: float) -> None:
        self.rank, self.delay, self.calls = rank, delay, 0

    def setup(self) -> None:
        self.pid = os.getpid()

    def work(self, shard: list[int], scale: int = 1) -> dict:
        time.sleep(self.delay)  # later ranks finish first, so completion order differs from shard order
        self.calls += 1
        return {"rank": self.rank, "pid": self.pid, "values": [v * scale for v in shard]}

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]

    def health(self) -> dict:
        return {"ready": True}


def test_split_evenly():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([1], 3) == [[1]]


def _check_group(group: WorkerGroup) -> None:
    group.run("setup")
    shards = [[i, i + 100] for i in range(7)]  # more shards than workers: round robin
    results = group.scatter_async("work", shards, scale=2).results()
    assert [r["values"] for r in results] == [[2 * i, 2 * (i + 100)] for i in range(7)]
    assert [r["rank"] for r in results] == [i % len(group) for i in range(7)]
    states = group.run("state_dict")
    assert [s["calls"] for s in states] == [3, 2, 2]


def test_local_cluster_is_loopback_only(ray_cluster):
    assert ray_cluster.util.get_node_ip_address() == "127.0.0.1"
    assert ray_cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_ray_group_orders_results_by_shard(ray_cluster):
    pool = ResourcePool("echo", num_bundles=3, cpus=1)
    try:
        group = WorkerGroup(RayBackend(pool), EchoWorker, [(r, 0.3 - 0.1 * r) for r in range(3)],
                            Placement(num_cpus=0.5), "echo")
        _check_group(group)
        pids = {r["pid"] for r in group.run("work", [])}
        assert len(pids) == 3 and os.getpid() not in pids  # real actors, separate processes
        # A second group on the same pool colocates (half a bundle each).
        second = WorkerGroup(RayBackend(pool), EchoWorker, [(r, 0.0) for r in range(3)], Placement(0.5), "echo2")
        second.run("setup")
        assert [r["rank"] for r in second.run("work", [1])] == [0, 1, 2]
        group.shutdown()
        second.shutdown()
    finally:
        pool.remove()


def test_ray_errors_propagate_and_unplaceable_pool_times_out(ray_cluster):
    pool = ResourcePool("err", num_bundles=1, cpus=1)
    try:
        group = WorkerGroup(RayBackend(pool), EchoWorker, [(0, 0.0)], Placement(0.5), "err")
        with pytest.raises(Exception, match="pid"):  # setup() not called: the method's AttributeError surfaces
            group.run("work", [1])
        group.shutdown()
    finally:
        pool.remove()
    with pytest.raises(PlacementTimeout, match=r"role 'huge' could not be placed in 2 s: it asks for 2 x .*CPU.: 64.*the cluster has 1 node"):
        ResourcePool("huge", num_bundles=2, cpus=64, timeout_s=2)


def test_local_backend_runs_the_same_workers_in_process():
    group = WorkerGroup(LocalBackend(), EchoWorker, [(r, 0.0) for r in range(3)], name="echo")
    _check_group(group)
    assert {r["pid"] for r in group.run("work", [])} == {os.getpid()}
    with pytest.raises(AttributeError):
        group.run("no_such_method")
