"""Ray overhead of the RL step: the same job on the Ray backend and in-process, timed per step after warm-up.

Writes the table into docs/benchmarks.md (section "Ray overhead"). Target: Ray step time at most 1.10x in-process.
Usage: .venv/bin/python benchmarks/overhead.py [--steps 12] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docs_table import replace_section  # noqa: E402

from diffrl.platform.config import load_job  # noqa: E402
from diffrl.platform.rl_loop import run_rl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def step_times(backend: str, steps: int, out: Path) -> list[float]:
    cfg = load_job(REPO / "configs/shapes_awm.yaml", [f"backend={backend}", f"trainer.steps={steps}",
                                                       "trainer.eval_every=0", "trainer.eval_seeds_per_prompt=1",
                                                       f"output_dir={out}", f"name={backend}"])
    summary = run_rl(cfg, echo=lambda _: None)
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return [r["time/step"] for r in records if "time/step" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        local = step_times("local", args.steps, Path(tmp))[args.warmup :]
        ray_ = step_times("ray", args.steps, Path(tmp))[args.warmup :]
    mean_local, mean_ray = sum(local) / len(local), sum(ray_) / len(ray_)
    ratio = mean_ray / mean_local
    verdict = "meets" if ratio <= 1.10 else "misses"
    text = (
        f"Same job (`configs/shapes_awm.yaml`: 8 prompts x 8 samples, 10 sampler steps, AWM with 6 timesteps), "
        f"{len(local)} timed steps after {args.warmup} warm-up steps, on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}).\n\n"
        "| backend | mean step time (s) |\n| --- | --- |\n"
        f"| in-process (`backend: local`) | {mean_local:.3f} |\n| Ray actors | {mean_ray:.3f} |\n\n"
        f"Ray / in-process = **{ratio:.3f}** ({verdict} the target of at most 1.10).\n"
    )
    replace_section(REPO / "docs/benchmarks.md", "Ray overhead", text)
    print(text)


if __name__ == "__main__":
    main()
