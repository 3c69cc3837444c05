"""Flow-GRPO vs AWM vs DiffusionNFT on the shapes world: held-out reward against rollout NFEs and wall time.

Every method runs its job file (configs/shapes_{flow_grpo,awm,nft}.yaml) with the same prompts, seeds, reward, model,
step count and eval schedule. Rollout NFEs = samples x sampler steps (no CFG in these jobs); eval NFEs are not
counted. Wall time is the sum of the RL step times (eval excluded). Writes the table into docs/benchmarks.md (section
"Method comparison") and the plot to docs/compare_methods.png.

Target (issue 4): AWM reaches Flow-GRPO's final held-out reward with at least 8x fewer rollout NFEs.
Usage: .venv/bin/python benchmarks/compare_methods.py [--steps 200] [--eval-every 25] [--eval-seeds 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docs_table import replace_section  # noqa: E402

from diffrl.kinds import load_job  # noqa: E402
from diffrl.kinds import run_job  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {"flow_grpo": "Flow-GRPO", "awm": "AWM", "nft": "DiffusionNFT"}


def run_method(method: str, args: argparse.Namespace, out: Path) -> dict:
    cfg = load_job(REPO / f"configs/shapes_{method}.yaml", [
        f"trainer.steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        f"trainer.eval_seeds_per_prompt={args.eval_seeds}", f"output_dir={out}", f"name={method}",
    ])
    summary = run_job(cfg)
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    per_step_nfe = cfg.rollout.prompts_per_step * cfg.rollout.group_size * cfg.rollout.num_steps
    wall, walls = 0.0, {0: 0.0}
    for r in records:
        if "time/step" in r:
            wall += r["time/step"]
            walls[r["step"]] = wall
    curve = [(r["step"], r["step"] * per_step_nfe, walls[r["step"]], r["eval/headline"])
             for r in records if "eval/headline" in r]
    return {"method": method, "curve": curve, "step_time": wall / max(args.steps, 1)}


def first_reaching(curve: list[tuple], target: float) -> tuple | None:
    return next((point for point in curve if point[3] >= target), None)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for result in results:
        _, nfes, walls, scores = zip(*result["curve"])
        axes[0].plot(nfes, scores, marker="o", label=METHODS[result["method"]])
        axes[1].plot(walls, scores, marker="o", label=METHODS[result["method"]])
    axes[0].set_xlabel("rollout NFEs")
    axes[1].set_xlabel("wall time of RL steps (s)")
    for ax in axes:
        ax.set_ylabel("held-out GenEval-shapes (strict)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-seeds", type=int, default=16)
    parser.add_argument("--methods", default="flow_grpo,awm,nft")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; allowed: {sorted(METHODS)}")
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_method(method, args, Path(tmp)) for method in methods]
    plot(results, REPO / "docs/compare_methods.png")

    rows = ["| method | base | final | best | rollout NFEs per step | mean RL step (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        scores = [p[3] for p in r["curve"]]
        per_step = r["curve"][1][1] // r["curve"][1][0] if len(r["curve"]) > 1 else 0
        rows.append(f"| {METHODS[r['method']]} | {scores[0]:.3f} | {scores[-1]:.3f} | {max(scores):.3f} | "
                    f"{per_step} | {r['step_time']:.2f} |")
    lines = [
        f"Shapes world, {args.steps} RL steps per method (8 prompts x 8 samples, 10 sampler steps), held-out eval "
        f"every {args.eval_every} steps with {args.eval_seeds} seeds per prompt, on {os.cpu_count()} CPU cores.",
        "", *rows, "", "![held-out reward vs rollout NFEs and wall time](compare_methods.png)", "",
    ]
    by_method = {r["method"]: r for r in results}
    if "flow_grpo" in by_method and "awm" in by_method:
        target = by_method["flow_grpo"]["curve"][-1][3]
        grpo_point, awm_point = first_reaching(by_method["flow_grpo"]["curve"], target), first_reaching(
            by_method["awm"]["curve"], target)
        if awm_point is None or awm_point[1] == 0:
            verdict = (f"AWM never reached Flow-GRPO's final held-out reward {target:.3f} within {args.steps} steps"
                       if awm_point is None else f"the base model already scores Flow-GRPO's final {target:.3f}")
        else:
            speedup = grpo_point[1] / awm_point[1]
            verdict = (f"Flow-GRPO's final held-out reward {target:.3f} (first reached after {grpo_point[1]} rollout "
                       f"NFEs) is reached by AWM after {awm_point[1]} NFEs: **{speedup:.1f}x fewer NFEs** "
                       f"({'meets' if speedup >= 8 else 'misses'} the 8x target; the AWM paper reports up to 24x).")
        lines.append(verdict)
    text = "\n".join(lines) + "\n"
    replace_section(REPO / "docs/benchmarks.md", "Method comparison", text)
    print(text)


if __name__ == "__main__":
    main()
