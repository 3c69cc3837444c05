"""`make demo` before and after the demo-speed work: wall time, per-stage step times and the held-out gain.

Each arm runs `diffrl run configs/shapes_awm.yaml` as `make demo` does (a fresh process, its own local Ray cluster),
the "before" arm with the overrides that restore the earlier recipe. Wall time is the whole command (start-up, base
eval, training, evals, reports); the stage times are the means over training steps of the run's metrics.jsonl
(time/rollout, time/reward, time/learn, time/sync). Results are saved per arm in benchmarks/results/demo_speed/ (runs under
runs/bench_demo_speed/) and reused unless --fresh, so the script resumes arm by arm. Writes the section "Demo speed" of docs/benchmarks.md.

Targets (issue "Evidence and speed"): `make demo` <= 6 minutes on 2 cores with a held-out gain >= +0.20.
Usage: .venv/bin/python benchmarks/demo_speed.py [--arms before after] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_table import replace_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results/demo_speed"
# The recipe of configs/shapes_awm.yaml before this work (200 steps at lr 3e-5, 6 AWM timesteps, evals every 50).
ARMS = {
    "before": ["trainer.steps=200", "trainer.eval_every=50", "learner.lr=3.0e-5", "learner.awm.num_timesteps=6",
               "learner.micro_batch_size=96"],
    "after": [],
}
STAGES = ("rollout", "reward", "learn", "sync", "step")


def run_arm(arm: str) -> dict:
    out = REPO / "runs/bench_demo_speed" / arm
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    command = [sys.executable, "-m", "diffrl.cli", "run", str(REPO / "configs/shapes_awm.yaml"),
               f"output_dir={out}", *ARMS[arm]]
    tick = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if proc.returncode != 0:
        raise SystemExit(f"demo_speed: arm {arm} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "shapes_awm/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "time/step" in r]
    evals = [(r["step"], r["eval/headline"]) for r in records if "eval/headline" in r]
    result = {"arm": arm, "overrides": ARMS[arm], "wall_s": wall, "steps": len(steps), "evals": evals,
              "base": evals[0][1], "final": evals[-1][1],
              **{f"{stage}_s": statistics.mean(r.get(f"time/{stage}", 0.0) for r in steps) for stage in STAGES}}
    (RESULTS / f"{arm}.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--fresh", action="store_true", help="rerun arms that have saved results")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {}
    for arm in ARMS:
        saved = RESULTS / f"{arm}.json"
        if arm in args.arms and (args.fresh or not saved.exists()):
            print(f"demo_speed: running arm {arm} ...", flush=True)
            results[arm] = run_arm(arm)
        elif saved.exists():
            results[arm] = json.loads(saved.read_text())
    rows = ["| arm | wall (min) | RL steps | step (s) | rollout | reward | learn | sync | start-up, evals, reports "
            "(s) | held-out base -> final | gain |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        other = r["wall_s"] - r["steps"] * r["step_s"]
        rows.append(f"| {r['arm']} | {r['wall_s'] / 60:.2f} | {r['steps']} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | "
                    f"{r['reward_s']:.2f} | {r['learn_s']:.2f} | {r['sync_s']:.2f} | {other:.0f} | "
                    f"{r['base']:.3f} -> {r['final']:.3f} | {r['final'] - r['base']:+.3f} |")
    lines = [f"- {r['arm']}: `{' '.join(r['overrides']) or '(the shipped configs/shapes_awm.yaml)'}`; held-out evals "
             + ", ".join(f"{s}: {v:.3f}" for s, v in r["evals"]) for r in results.values()]
    body = "\n".join([
        "`diffrl run configs/shapes_awm.yaml` (what `make demo` runs) as a fresh process on 2 CPU cores, before and "
        "after the demo-speed work; stage columns are mean seconds per RL step (rollout includes the wait for the "
        "last shard; reward is the further wait for the scores). Target: at most 6 minutes with a held-out gain of "
        "at least +0.20.", "", *rows, "", *lines])
    replace_section(REPO / "docs/benchmarks.md", "Demo speed", body)
    print(body)


if __name__ == "__main__":
    main()
