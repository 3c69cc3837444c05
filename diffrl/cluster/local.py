"""Connecting to Ray: join a cluster when given an address, else start a local one bound to 127.0.0.1."""

from __future__ import annotations

import os


def connect_ray(address: str | None = None, num_cpus: int = 8, num_gpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) if set; otherwise start a local cluster whose ports listen on loopback only.

    Logical CPUs are a scheduling budget, not cores: a local cluster gets `num_cpus` so that every role's actors fit
    (ENVIRONMENT.md: with num_cpus=2 a few 0.5-CPU actors plus a placement group never fit).
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keeps the node address on loopback
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=True,
    )
