import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray session per test module, bound to loopback."""
    import ray

    from diffrl.platform.ray_cluster import connect_ray

    connect_ray(num_cpus=8)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests run where CUDA exists and are skipped, with the reason, elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
