"""The Ray backend of WorkerGroup: workers become actors placed on a ResourcePool (a Ray placement group)."""

from __future__ import annotations

from typing import Any, Sequence

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from diffrl.platform.worker import Placement


class PlacementTimeout(RuntimeError):
    """A resource pool could not be placed; the message names the pool and what the cluster has."""


class ResourcePool:
    """`num_bundles` bundles of `cpus`/`gpus` each, reserved together. Groups that share a pool colocate: worker i
    of every group lands on bundle i, each taking its Placement's share of the bundle (fractional GPUs)."""

    def __init__(self, name: str, num_bundles: int, cpus: float, gpus: float = 0.0,
                 resources: dict[str, float] | None = None, timeout_s: float = 120.0,
                 bundles: list[dict[str, float]] | None = None) -> None:
        """`num_bundles` bundles of cpus / gpus / custom resources each, or the explicit `bundles`."""
        self.name = name
        bundle: dict[str, float] = {"CPU": cpus, **(resources or {})}
        if gpus:
            bundle["GPU"] = gpus
        self.bundles = [dict(b) for b in bundles] if bundles else [dict(bundle) for _ in range(num_bundles)]
        num_bundles = len(self.bundles)
        self.group: PlacementGroup = placement_group(self.bundles, strategy="PACK", name=f"diffrl-{name}")
        try:
            ray.get(self.group.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.group)
            raise PlacementTimeout(
                f"role '{name}' could not be placed in {timeout_s:.0f} s: it asks for {num_bundles} x {bundle}; "
                f"the cluster has {_describe_nodes()} (free now: {_rounded(ray.available_resources())}). Lower the "
                f"role's workers, cpus/gpus per worker or custom resources, or add nodes (ray.placement_timeout_s "
                f"sets the wait)"
            ) from None

    def remove(self) -> None:
        remove_placement_group(self.group)


def _rounded(resources: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in sorted(resources.items())
            if not k.startswith(("node:", "memory", "object_store_memory", "bundle_group"))}


def _describe_nodes() -> str:
    """Each alive node's address and schedulable resources, e.g. "2 nodes: 127.0.0.1 {CPU: 8, node_a: 1}; ..."."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    parts = [f"{n.get('NodeManagerAddress')} {_rounded(n.get('Resources', {}))}" for n in nodes]
    return f"{len(nodes)} node(s): " + "; ".join(parts)


class RayBackend:
    """Creates each group's actors on the bundles of one ResourcePool."""

    def __init__(self, pool: ResourcePool) -> None:
        self.pool = pool

    def create(self, cls: type, args: Sequence[tuple], placement: Placement, name: str) -> list[Any]:
        if len(args) > len(self.pool.bundles):
            raise ValueError(f"group {name} wants {len(args)} workers; pool '{self.pool.name}' has "
                             f"{len(self.pool.bundles)} bundles")
        actor_cls = ray.remote(cls)
        return [
            actor_cls.options(
                name=None,
                num_cpus=placement.num_cpus,
                num_gpus=placement.num_gpus,
                resources=placement.resources or None,
                runtime_env=placement.runtime_env or None,
                # A dead actor is restarted (its constructor runs again); its lost calls are not retried by Ray but
                # re-sent by WorkerGroup after the group's restore hook brought the new process up to date.
                max_restarts=placement.max_restarts,
                max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pool.group, placement_group_bundle_index=index
                ),
            ).remote(*worker_args)
            for index, worker_args in enumerate(args)
        ]

    def call(self, handle: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(handle, method).remote(*args, **kwargs)

    def get(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]:
        return ray.get(list(futures), timeout=timeout)

    def wait_one(self, futures: Sequence[Any], timeout: float | None = None) -> int | None:
        ready, _ = ray.wait(list(futures), num_returns=1, timeout=timeout)
        return list(futures).index(ready[0]) if ready else None

    def kill(self, handles: Sequence[Any]) -> None:
        for handle in handles:
            ray.kill(handle)

    def restart(self, handle: Any) -> None:
        ray.kill(handle, no_restart=False)

    def is_lost(self, error: BaseException) -> bool:
        return isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))

    def is_timeout(self, error: BaseException) -> bool:
        return isinstance(error, ray.exceptions.GetTimeoutError)

    def threads_for(self, cpus: float) -> int:
        """An actor's torch threads: the whole CPUs it reserved (at least one)."""
        return max(1, int(cpus))

    def single_node(self) -> bool:
        """True when the Ray cluster is one node and this process (the driver) runs on it: files in the driver's
        temp dir are then visible to every worker and loopback reaches every one of them."""
        alive = [n for n in ray.nodes() if n.get("Alive")]
        return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()

    def node_ip(self, handle: Any) -> str:
        """The IP address of the node an actor runs on."""
        return ray.get(handle.__ray_call__.remote(lambda worker: ray.util.get_node_ip_address()))
