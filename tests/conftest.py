import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray session per test module, bound to loopback."""
    import ray

    from diffrl.cluster.local import connect_ray

    connect_ray(num_cpus=8)
    yield ray
    ray.shutdown()
