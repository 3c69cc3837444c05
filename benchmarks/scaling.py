"""Rollout scaling on one machine with a fixed thread budget per worker: the default job's rollout stage (one step's
samples) on 1 and on 2 Ray rollout workers of 1 CPU each (1 torch thread each), and the same work in-process on 1
thread, timed in one run after warm-up; the samples must be identical in every layout.

Targets (issue "Evidence and speed"): 2 workers >= 1.7x the throughput of 1; Ray overhead (1 Ray worker vs
in-process, both 1 thread) <= 1.05. Writes the section "Rollout scaling" of docs/benchmarks.md.
Usage: .venv/bin/python benchmarks/scaling.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from docs_table import replace_section  # noqa: E402

from diffrl.kinds import load_job  # noqa: E402
from diffrl.kinds.rl.data import prompt_splits, step_requests  # noqa: E402
from diffrl.platform.ray_backend import RayBackend, ResourcePool  # noqa: E402
from diffrl.platform.ray_cluster import connect_ray  # noqa: E402
from diffrl.platform.worker import LocalBackend, Placement, WorkerGroup  # noqa: E402
from diffrl.workers.batch import RolloutBatch  # noqa: E402
from diffrl.workers.rollout import RolloutWorker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed(group: WorkerGroup, requests: list, rounds: int) -> tuple[float, RolloutBatch]:
    """Median seconds of one step's rollout (after one warm-up), and the samples."""
    batch = RolloutBatch.concat(group.map("generate", requests))
    times = []
    for _ in range(rounds):
        tick = time.perf_counter()
        batch = RolloutBatch.concat(group.map("generate", requests))
        times.append(time.perf_counter() - tick)
    return statistics.median(times), batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = load_job(REPO / "configs/shapes_awm.yaml")
    requests = step_requests(prompt_splits(cfg)[0], cfg, 0)
    worker_args = (cfg.model.model_dump(), cfg.rollout.model_dump(), False)

    torch.set_num_threads(1)
    local = WorkerGroup(LocalBackend(), RolloutWorker, [worker_args], Placement(num_cpus=1), "rollout")
    local.run("setup", num_threads=1)
    local_s, reference = timed(local, requests, args.rounds)

    connect_ray(num_cpus=4)
    results = {}
    cores = os.cpu_count() or 1
    for threads in (1, cores):  # the fixed budget, then the default (every core per worker)
        for workers in (1, 2):
            pool = ResourcePool(f"rollout{workers}x{threads}", num_bundles=workers, cpus=threads)
            group = WorkerGroup(RayBackend(pool), RolloutWorker, [worker_args] * workers,
                                Placement(num_cpus=threads), "rollout")
            try:
                group.run("setup", num_threads=threads)
                seconds, batch = timed(group, requests, args.rounds)
            finally:
                group.shutdown()
                pool.remove()
            results[workers, threads] = seconds
            if not (torch.equal(batch.samples, reference.samples) and (batch.images == reference.images).all()):
                sys.exit(f"samples differ with {workers} Ray worker(s) of {threads} thread(s)")
    speedup, overhead = results[1, 1] / results[2, 1], results[1, 1] / local_s
    default_speedup = results[1, cores] / results[2, cores]
    text = (
        f"The default job's rollout stage ({len(requests)} samples, {cfg.rollout.num_steps} steps, one step's "
        f"requests), torch threads per worker as listed, median of {args.rounds} rounds after warm-up, "
        f"{os.cpu_count()} CPU cores; samples identical in every layout (checked). Two workers of every core each "
        f"oversubscribe the machine (twice as many threads as cores).\n\n"
        "| layout | threads per worker | seconds per step | throughput vs 1 Ray worker of the same threads |\n"
        "| --- | --- | --- | --- |\n"
        f"| in-process | 1 | {local_s:.3f} | {results[1, 1] / local_s:.2f}x |\n"
        f"| 1 Ray worker | 1 | {results[1, 1]:.3f} | 1.00x |\n"
        f"| 2 Ray workers | 1 | {results[2, 1]:.3f} | {speedup:.2f}x |\n"
        f"| 1 Ray worker | {cores} | {results[1, cores]:.3f} | 1.00x |\n"
        f"| 2 Ray workers | {cores} | {results[2, cores]:.3f} | {default_speedup:.2f}x |\n\n"
        f"Scaling 1 -> 2 workers at 1 thread each: {speedup:.2f}x (target >= 1.7x: "
        f"{'met' if speedup >= 1.7 else 'missed'}); at {cores} threads each (every worker already uses every core) "
        f"{default_speedup:.2f}x. Ray overhead, 1 Ray worker vs in-process at 1 thread: {overhead:.3f} (target <= "
        f"1.05: {'met' if overhead <= 1.05 else 'missed'}).\n"
    )
    replace_section(REPO / "docs/benchmarks.md", "Rollout scaling", text)
    print(text)


if __name__ == "__main__":
    main()
