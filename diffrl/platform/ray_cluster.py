"""Connecting to Ray: join a cluster when given an address, else start a local one bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os

# What Ray prints on every local start that is not ours to act on (shown with DIFFRL_VERBOSE=1): the notice that
# token authentication is on (it is, by design: diffrl's local clusters use it whenever ~/.ray holds a token).
RAY_NOISE = ("Token authentication is enabled for this Ray cluster",)


class _DropRayNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_NOISE)


def _quiet_ray() -> int:
    """The driver's Ray log level (WARNING; INFO with DIFFRL_VERBOSE=1), with RAY_NOISE filtered on the logger that
    emits it."""
    if os.environ.get("DIFFRL_VERBOSE"):
        return logging.INFO
    emitter = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropRayNoise) for f in emitter.filters):
        emitter.addFilter(_DropRayNoise())
    return logging.WARNING


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _keep_loopback_addresses() -> None:
    """Stop Ray from resolving 127.0.0.1 to the machine's routable address (it does unless "clusters" are disabled).
    The switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is read when ray is imported, which may have happened already,
    so set both the variable (inherited by Ray's processes) and the already-read constant."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def connect_ray(address: str | None = None, num_cpus: int = 8, num_gpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) if set; otherwise start a local cluster whose ports listen on loopback only
    (never one found through Ray's address file).

    Logical CPUs are a scheduling budget, not cores: a local cluster gets `num_cpus` so that every role's actors fit
    (measured: with num_cpus=2 a few 0.5-CPU actors plus a placement group never fit).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if _is_loopback(address):
            # A cluster on this machine: keep 127.0.0.1 as given, and use this machine's auth token when one exists.
            # `ray start --head` turns token auth on whenever a token exists (RAY_AUTH_MODE unset), but ray.init with
            # an explicit address only sends it under RAY_AUTH_MODE=token; a token sent to a cluster without auth is
            # ignored.
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            _keep_loopback_addresses()
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        ray.init(address=address, log_to_driver=True)
        return
    _keep_loopback_addresses()
    # Ray runs worker processes at nice 15 by default so that its daemons stay responsive on shared nodes; on a
    # local cluster the workers are the whole job, and nice 15 costs ~15% step time on 2 cores (docs/benchmarks.md:
    # Ray overhead 1.18 -> 1.02). The raylet reads this when ray.init starts it; a user's own setting wins.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # address="local" always starts a new cluster: without it ray.init attaches to whatever cluster Ray's leftover
    # address file (/tmp/ray/ray_current_cluster) names, e.g. a `ray start --head` stopped with Ctrl-C, and fails
    # with "When connecting to an existing cluster, num_cpus and num_gpus must not be provided".
    ray.init(
        address="local",
        logging_level=_quiet_ray(),
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
