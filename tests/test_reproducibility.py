"""What is reproducible (README, "Reproducibility"): on one machine a run is bitwise the same, run after run; a
worker's torch thread count comes from its config (cpus_per_worker under Ray), not from the machine; the numbers
follow the CPU kernels torch dispatches for the machine's instruction set (ATen's CPU capability, oneDNN's ISA), which
is why machines of the same kind with different CPUs part after some RL steps."""

import functools
import os
import subprocess
import sys

import pytest
import torch

from diffrl.platform.ray_backend import RayBackend, ResourcePool
from diffrl.platform.worker import Placement, WorkerBase, WorkerGroup


class ThreadReport(WorkerBase):
    def threads(self) -> int:
        self.require_ready()
        return torch.get_num_threads()

PROBE = """
import hashlib, torch
torch.set_num_threads({threads})
from diffrl.models.tiny_t2i import TinyT2I
m = TinyT2I.from_pretrained("builtin:shapes_base")
g = torch.Generator().manual_seed(0)
x, t = torch.randn(32, *m.sample_shape, generator=g), torch.rand(32, generator=g)
cond = {{k: v.detach() for k, v in m.encode_prompts(["a red circle above a blue square"] * 32).items()}}
out = m.denoiser(x, t, cond)
out.square().mean().backward()
h = hashlib.sha256(out.detach().numpy().tobytes())
for p in m.denoiser.parameters():
    h.update(p.grad.numpy().tobytes())
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), h.hexdigest())
"""


@functools.lru_cache(maxsize=None)
def native_probe(threads: int) -> tuple[str, str]:
    """probe(threads) with the machine's own kernels, run once per thread count for the tests that compare to it."""
    return probe(threads)


def probe(threads: int, **env: str) -> tuple[str, str]:
    """(CPU capability, sha256 of one forward's output and every gradient) of the shipped model, in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(threads=threads)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    capability, used, digest = proc.stdout.split()[-3:]
    assert int(used) == threads
    return capability, digest


def test_the_model_step_is_bitwise_the_same_in_every_fresh_process_on_one_machine():
    assert native_probe(2) == probe(2)


def test_a_ray_workers_thread_count_is_its_configs_cpus_not_the_machines(ray_cluster):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable by the actors
    threads = {}
    for cpus in (0.5, 1.0, 3.0):  # the cluster has 8 CPUs whatever the machine has
        pool = ResourcePool(f"threads-{cpus}", num_bundles=1, cpus=cpus)
        group = WorkerGroup(RayBackend(pool), ThreadReport, [()], Placement(cpus), "threads")
        try:
            group.get([group.setup_worker(0)])  # as the runtime sets its workers up
            threads[cpus] = group.run("threads")[0]
        finally:
            group.shutdown()
            pool.remove()
    assert threads == {0.5: 1, 1.0: 1, 3.0: 3}


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_VNNI", "AVX512_BF16"),
                    reason="needs a CPU with AVX512 to compare against the AVX2 kernels")
def test_the_kernels_of_the_cpus_instruction_set_change_the_bits():
    native, digest = native_probe(2)
    avx2, digest_avx2 = probe(2, ATEN_CPU_CAPABILITY="avx2")
    assert (native, avx2) == ("AVX512", "AVX2") and digest != digest_avx2
