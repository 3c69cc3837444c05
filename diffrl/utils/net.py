"""Network defaults shared by every process group the project forms: loopback unless the job spans nodes."""

from __future__ import annotations

import os
import socket


def pin_loopback_interfaces() -> None:
    """Point gloo and NCCL at the loopback interface (lo, or lo0 on macOS) unless the user set GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME: the learner group and the weight-broadcast group then never listen on other interfaces."""
    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)


def free_port(host: str) -> int:
    """A TCP port free on `host` now (for a rendezvous store this process will serve)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
