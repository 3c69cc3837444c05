"""Does RL against the learned preference reward alone hack it? On the scenes world, AWM (configs/scenes_awm.yaml)
trains against `scenes_preference` alone (the rules kept at weight 0, so they are scored but do not steer), against
the rules alone and against the setting's default mix, at equal steps and seeds. Every held-out eval scores both
rewards, so the curves show whether the rule reward (GenEval-scenes strict and partial credit) rises with the
learned reward or falls while it climbs.

Each (arm, seed) run is saved to benchmarks/results/reward_hacking/ when it ends (an interrupted benchmark resumes
with the runs it lacks; --fresh reruns). Writes docs/benchmarks.md section "Scenes world: reward hacking" and
docs/reward_hacking.png.
Usage: .venv/bin/python benchmarks/reward_hacking.py [--steps 120] [--eval-every 40] [--seeds 0 1 2] [--arms 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docs_table import replace_section  # noqa: E402
from saved_runs import arm_parser, arm_seed_runs, band, save_figure  # noqa: E402

from diffrl.kinds import load_job  # noqa: E402
from diffrl.kinds import run_job  # noqa: E402
from diffrl.platform.reporting import MetricsLog  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results/reward_hacking"
ARMS = {  # (rules weight, preference weight)
    "preference alone": (0.0, 1.0),
    "rules alone": (1.0, 0.0),
    "mix (the default)": (0.5, 0.5),
}
LR = "learner.lr=1.5e-4"  # the job file's 6e-5 barely moves the scenes base in this many steps (as Sol-RL's 3e-5)
METRICS = {"strict": "eval/geneval_scenes/strict", "partial": "eval/geneval_scenes",
           "preference": "eval/scenes_preference"}


def run_arm(index: int, seed: int, args: argparse.Namespace, out: Path) -> dict:
    name = list(ARMS)[index]
    rules, preference = ARMS[name]
    cfg = load_job(REPO / "configs/scenes_awm.yaml", [
        f"reward.rewards.0.weight={rules}", f"reward.rewards.1.weight={preference}", f"seed={seed}", LR,
        f"trainer.steps={args.steps}", f"trainer.eval_every={args.eval_every}", f"output_dir={out}",
        f"name=hack{index}_seed{seed}",
    ])
    summary = run_job(cfg)
    records = MetricsLog(Path(summary["run_dir"]) / "metrics.jsonl").read()
    evals = [r for r in records if "eval/headline" in r]
    missing = sorted({key for key in METRICS.values() for r in evals if key not in r})
    if missing:
        raise KeyError(f"the evals lack {missing}; they log {sorted(k for k in evals[0] if k.startswith('eval/'))}")
    return {"name": name, "seed": seed,
            "curves": {label: [(r["step"], r[key]) for r in evals] for label, key in METRICS.items()}}


def runs(args: argparse.Namespace) -> dict[str, list[dict]]:
    return arm_seed_runs(list(ARMS), args.arms, args.seeds, RESULTS,
                         lambda index, seed, out: run_arm(index, seed, args, out), [args.steps, args.eval_every],
                         args.fresh)


def curve(seeds: list[dict], label: str) -> tuple[list[int], np.ndarray]:
    steps = [step for step, _ in seeds[0]["curves"][label]]
    return steps, np.array([[value for _, value in r["curves"][label]] for r in seeds])


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 3.6))
    for ax, label in zip(axes, METRICS):
        for name, seeds in results.items():
            steps, values = curve(seeds, label)
            band(ax, steps, values, name)
        ax.set_title(f"held-out {label}")
        ax.set_xlabel("learner step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = arm_parser(__doc__, len(ARMS), 120, 40, [0, 1, 2])
    args = parser.parse_args()
    results = runs(args)
    plot(results, REPO / "docs/reward_hacking.png")
    lines = [
        f"AWM on the scenes world (configs/scenes_awm.yaml: `builtin:scenes_base`, lr 1.5e-4, 8 prompts x 8 samples), "
        f"{args.steps} learner steps, held-out eval every {args.eval_every} steps at 16 fixed seeds per prompt, "
        f"training seeds {', '.join(map(str, args.seeds))}; the trained reward's weights are (rules, preference). "
        "Each cell: change from step 0 to the last eval, mean over seeds (per seed in brackets). "
        "`benchmarks/reward_hacking.py`.",
        "",
        "| trained on | " + " | ".join(f"held-out {label}: start -> end" for label in METRICS) + " |",
        "| --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    for name, seeds in results.items():
        cells = []
        for label in METRICS:
            _, values = curve(seeds, label)
            per_seed = " / ".join(f"{v:+.3f}" for v in values[:, -1] - values[:, 0])
            cells.append(f"{values[:, 0].mean():.3f} -> {values[:, -1].mean():.3f} ({per_seed})")
        lines.append(f"| {name} {ARMS[name]} | " + " | ".join(cells) + " |")
    lines += ["", "![held-out rule and learned rewards while training on each](reward_hacking.png)"]
    text = "\n".join(lines) + "\n"
    replace_section(REPO / "docs/benchmarks.md", "Scenes world: reward hacking", text)
    print(text)


if __name__ == "__main__":
    main()
