"""Load test of a served reward on loopback: 8 concurrent clients x 500 requests against `diffrl serve-reward` (Ray
Serve, FastAPI ingress, its default limits).

Each request carries 4 images (64x64) and prompts that name the client and request; the served reward echoes its
prompts, so every response is checked to answer exactly its own request. Reports lost, duplicated and crossed
responses (target: zero), throughput and p50/p99 latency into docs/benchmarks.md (section "Reward server load").
Usage: .venv/bin/python benchmarks/reward_load.py [--clients 8] [--requests 500] [--replicas 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docs_table import replace_section  # noqa: E402

from diffrl.rewards.base import RewardError  # noqa: E402
from diffrl.rewards.remote import RemoteReward  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "diffrl.cli", "serve-reward", "benchmarks/echo_reward.py:echo_brightness",
         "--port", str(port), "--replicas", str(args.replicas), "--cpus-per-replica", "0.5"], cwd=REPO,
        stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        server.stdout.readline()
        deadline = time.time() + 60
        images = np.random.default_rng(0).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
        while True:
            try:
                RemoteReward(url, timeout_s=5)(images, ["warm-up"] * 4, [{}] * 4)
                break
            except RewardError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        answered: list[str] = []
        crossed, failures, latencies = [], [], []
        lock = threading.Lock()

        def client(index: int) -> None:
            reward = RemoteReward(url, timeout_s=60)
            for request in range(args.requests):
                prompts = [f"client{index}-request{request}-image{j}" for j in range(4)]
                tick = time.perf_counter()
                try:
                    out = reward(images, prompts, [{}] * 4)
                except RewardError as err:
                    with lock:
                        failures.append(str(err))
                    continue
                elapsed = time.perf_counter() - tick
                with lock:
                    latencies.append(elapsed)
                    answered.append(f"client{index}-request{request}")
                    if out.details["echo"] != prompts:
                        crossed.append(f"client{index}-request{request}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)
    total = args.clients * args.requests
    counts = Counter(answered)
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    lost = total - len(counts)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (float("nan"), float("nan"))
    text = (
        f"`diffrl serve-reward` (Ray Serve, {args.replicas} replicas of 0.5 CPU behind a FastAPI ingress and the "
        f"connection-bounding front door, default limits; JSON with raw uint8 images) on 127.0.0.1, "
        f"{args.clients} concurrent clients x {args.requests} requests, 4 images of 64x64 per request, "
        f"{os.cpu_count()} CPU cores.\n\n"
        "| requests | answered | lost | duplicated | crossed | failed | throughput (req/s) | p50 (ms) | p99 (ms) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {total} | {len(answered)} | {lost} | {duplicated} | {len(crossed)} | {len(failures)} | "
        f"{len(answered) / wall:.0f} | {p50:.1f} | {p99:.1f} |\n"
    )
    replace_section(REPO / "docs/benchmarks.md", "Reward server load", text)
    print(text)
    if lost or duplicated or crossed or failures:
        sys.exit(f"reward server lost {lost}, duplicated {duplicated}, crossed {len(crossed)}, failed {len(failures)}")


if __name__ == "__main__":
    main()
