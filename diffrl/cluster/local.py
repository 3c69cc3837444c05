"""Connecting to Ray: join a cluster when given an address, else start a local one bound to 127.0.0.1."""

from __future__ import annotations

import os


def pin_loopback_interfaces() -> None:
    """Point gloo and NCCL at the loopback interface (lo, or lo0 on macOS) unless the user set GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME: the learner group and the weight-broadcast group then never listen on other interfaces."""
    import socket

    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)


def connect_ray(address: str | None = None, num_cpus: int = 8, num_gpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) if set; otherwise start a local cluster whose ports listen on loopback only.

    Logical CPUs are a scheduling budget, not cores: a local cluster gets `num_cpus` so that every role's actors fit
    (ENVIRONMENT.md: with num_cpus=2 a few 0.5-CPU actors plus a placement group never fit).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # Ray resolves 127.0.0.1 to the machine's routable address unless "clusters" are disabled. The switch
    # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is read when ray is imported, which may have happened before this call,
    # so set both the variable (inherited by Ray's processes) and the already-read constant.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=True,
    )
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in ("127.0.0.1", "::1"):
        ray.shutdown()
        raise RuntimeError(f"the local Ray cluster came up on {node_ip}, not loopback; refusing to run")
