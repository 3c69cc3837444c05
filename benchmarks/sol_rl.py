"""Sol-RL against its ablations at equal learner steps (same prompts, eval seeds, reward, learner), with several
training seeds per arm so that the spread between seeds says whether a difference is an effect; on the shapes world
(configs/shapes_sol.yaml, `--world shapes`) or the scenes world (configs/scenes_sol.yaml: its rules + learned reward
mix, `--world scenes`).

Arms (the world's Sol-RL job file with overrides; K = 24 trained samples per prompt, 4 prompts per step):
  24-of-24 full precision   standard rollouts, group 24
  24-of-96 full precision   explore 96 seeds at full precision and 10 steps, train on the chosen 24 directly
  24-of-96 NVFP4, no regen  explore in NVFP4 with 6 steps, train on the chosen NVFP4 samples directly
  Sol-RL 24-of-96           explore in NVFP4 with 6 steps, regenerate the chosen 24 at full precision, train on those
  24-of-96, mean-deviation  as 24-of-96 full precision, choosing the 24 farthest from the pool's mean reward
                            (a selection-rule control: with a saturated reward it picks mostly failures)

Every arm runs without the whole-pool audit (benchmarks/sol_fidelity.py measures ranking fidelity on whole pools),
at the world's learning rate (shapes: the demo's 6e-5; scenes: its job file's); held-out evals use fixed seeds per
prompt (shapes 32, scenes 16). Each (arm, seed) run is saved to benchmarks/results/sol_rl/ (scenes:
sol_rl_scenes/) when it ends, so an interrupted benchmark resumes with the runs it lacks (--fresh reruns).
Writes docs/benchmarks.md section "Sol-RL" ("Sol-RL: scenes world") with mean and per-seed held-out reward, gain
over the shared base, the learner steps each arm needs to reach the 24-of-24 arm's final reward, step time split,
trained-batch reward mean and spread, ranking fidelity on the chosen seeds; and docs/sol_rl.png (sol_rl_scenes.png):
curves, the band spanning the seeds. On CPU the NVFP4 copy is emulated by fake quantization and is slower than full
precision, not faster; the table says so.
Usage: .venv/bin/python benchmarks/sol_rl.py [--world shapes] [--steps 60] [--eval-every 20] [--seeds 0 1]
       [--arms 0 1 2 3 4] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docs_table import replace_section  # noqa: E402
from saved_runs import saved_or_run  # noqa: E402

from diffrl.kinds import load_job  # noqa: E402
from diffrl.kinds import run_job  # noqa: E402
from diffrl.platform.reporting import MetricsLog  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "24-of-24 full precision": ["rollout.strategy=standard"],
    "24-of-96 full precision": ["rollout.sol.explore_precision=fp32", "rollout.sol.explore_steps=10",
                                "rollout.sol.regenerate=false"],
    "24-of-96 NVFP4, no regeneration": ["rollout.sol.regenerate=false"],
    "Sol-RL 24-of-96": [],
    "24-of-96 full precision, mean-deviation selection": [
        "rollout.sol.explore_precision=fp32", "rollout.sol.explore_steps=10", "rollout.sol.regenerate=false",
        "rollout.sol.select=mean_deviation"],
}
WORLDS = {
    "shapes": {"job": "configs/shapes_sol.yaml", "results": "sol_rl", "section": "Sol-RL", "figure": "sol_rl.png",
               "common": ["learner.lr=6e-5", "rollout.sol.audit_prompts=0", "trainer.eval_seeds_per_prompt=32"],
               "label": "GenEval-shapes (strict, 32 seeds)", "seeds_per_prompt": 32,
               "what": "Shapes world, AWM learner (lr 6e-5)"},
    "scenes": {"job": "configs/scenes_sol.yaml", "results": "sol_rl_scenes", "section": "Sol-RL: scenes world",
               "figure": "sol_rl_scenes.png", "common": ["rollout.sol.audit_prompts=0"],
               "label": "GenEval-scenes (strict, 16 seeds)", "seeds_per_prompt": 16,
               "what": "Scenes world (`builtin:scenes_base`, reward 0.5 GenEval-scenes partial credit + 0.5 "
                       "scenes_preference), AWM learner (lr 1.5e-4)"},
}
STAGES = ("explore", "regenerate", "rollout", "reward", "learn", "sync")


def run_arm(index: int, seed: int, args: argparse.Namespace, out: Path) -> dict:
    name, world = list(ARMS)[index], WORLDS[args.world]
    cfg = load_job(REPO / world["job"], [
        *ARMS[name], *world["common"], f"seed={seed}", f"trainer.steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        f"output_dir={out}", f"name=arm{index}_seed{seed}",
    ])
    summary = run_job(cfg)
    records = MetricsLog(Path(summary["run_dir"]) / "metrics.jsonl").read()
    steps = [r for r in records if "time/step" in r]

    def mean(key: str) -> float | None:
        values = [r[key] for r in steps if key in r]
        return float(np.nanmean(values)) if values else None

    return {
        "name": name, "seed": seed, "steps": args.steps, "lr": cfg.learner.lr,
        "curve": [(r["step"], r["eval/headline"]) for r in records if "eval/headline" in r],
        "reward_curve": [(r["step"], r["eval/reward"]) for r in records if "eval/reward" in r],
        "times": {stage: mean(f"time/{stage}") for stage in STAGES}, "step": mean("time/step"),
        "train_reward": mean("reward/mean"), "train_std": mean("reward/std"),
        "tau": mean("sol/kendall_tau"), "rho": mean("sol/spearman_rho"),
    }


def eval_steps(args: argparse.Namespace) -> list[int]:
    """The steps a run with these settings evaluates at (step 0, every eval_every, the last)."""
    return sorted(set(range(0, args.steps + 1, args.eval_every or max(args.steps, 1))) | {args.steps})


def runs(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every (arm, seed) result, from the saved file or by running it (saved as soon as it ends)."""
    lr = load_job(REPO / WORLDS[args.world]["job"], WORLDS[args.world]["common"]).learner.lr

    def fits(result: dict) -> bool:
        return [step for step, _ in result["curve"]] == eval_steps(args) and result.get("lr", lr) == lr

    out: dict[str, list[dict]] = {}
    for index, name in enumerate(ARMS):
        for seed in args.seeds:
            saved = REPO / "benchmarks/results" / WORLDS[args.world]["results"] / f"arm{index}_seed{seed}.json"

            def run(index: int = index, seed: int = seed, name: str = name) -> dict:
                print(f"== {name}, seed {seed}", flush=True)
                with tempfile.TemporaryDirectory() as tmp:
                    return run_arm(index, seed, args, Path(tmp))

            if index in args.arms:
                out.setdefault(name, []).append(saved_or_run(saved, run, fits, args.fresh))
            elif saved.exists() and fits(result := json.loads(saved.read_text())):
                out.setdefault(name, []).append(result)
            elif saved.exists():
                print(f"skipping the saved {name}, seed {seed}: it has another eval schedule (rerun it with "
                      f"--arms {index})", flush=True)
    return out


def plot(results: dict[str, list[dict]], path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, seeds in results.items():
        steps = [step for step, _ in seeds[0]["curve"]]
        scores = np.array([[score for _, score in r["curve"]] for r in seeds])
        line, = ax.plot(steps, scores.mean(0), marker="o", label=f"{name} ({len(seeds)} seeds)")
        ax.fill_between(steps, scores.min(0), scores.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("learner step")
    ax.set_ylabel(f"held-out {ylabel}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def avg(seeds: list[dict], key: str) -> float | None:
    values = [r[key] for r in seeds if r[key] is not None]
    return float(np.mean(values)) if values else None


def steps_to(seeds: list[dict], target: float) -> int | None:
    """The first eval step at which the mean over seeds of the curve reaches `target` (None: never)."""
    steps = [step for step, _ in seeds[0]["curve"]]
    mean = np.array([[score for _, score in r["curve"]] for r in seeds]).mean(0)
    return next((step for step, value in zip(steps, mean) if value >= target - 1e-12), None)


def table(results: dict[str, list[dict]], args: argparse.Namespace) -> list[str]:
    world = WORLDS[args.world]
    base = results[list(results)[0]][0]["curve"][0][1]
    baseline = results.get(list(ARMS)[0])
    target = float(np.mean([r["curve"][-1][1] for r in baseline])) if baseline else None
    base_steps = steps_to(baseline, target) if baseline else None
    lines = [
        f"{world['what']}, {args.steps} learner steps per arm, 4 prompts x 24 trained samples per step, held-out "
        f"eval every {args.eval_every} steps at {world['seeds_per_prompt']} fixed seeds per prompt (the same for "
        f"every arm and seed; base {base:.3f}), training seeds {', '.join(map(str, args.seeds))}; {os.cpu_count()} "
        "CPU cores. `benchmarks/sol_rl.py"
        + (" --world scenes" if args.world == "scenes" else "") + "`. **On CPU the NVFP4 copy is emulated (fake "
        "quantization in float32), so exploring in NVFP4 is slower than full precision here; the speed-up needs "
        "NVFP4 tensor cores (transformer-engine on compute capability 10.x).** The times show where a step goes, "
        "not Sol-RL's GPU speed.",
        "",
        "| arm | final, mean | final per seed | gain over base | best eval, mean | steps to 24-of-24's final | "
        "trained reward mean | trained reward std | step (s) | explore | regenerate | rollout | reward | learn | "
        "tau-b, chosen 24 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, seeds in results.items():
        finals = [r["curve"][-1][1] for r in seeds]
        best = float(np.mean([max(s for _, s in r["curve"]) for r in seeds]))
        times = {stage: avg([{"v": r["times"][stage]} for r in seeds], "v") for stage in STAGES}
        reach = steps_to(seeds, target) if target is not None else None
        reach_text = "not reached" if reach is None else (
            f"{reach}" + (f" ({base_steps / reach:.1f}x fewer)" if base_steps and reach and name != list(ARMS)[0]
                          else ""))
        lines.append(
            f"| {name} | {np.mean(finals):.3f} | {' / '.join(f'{f:.3f}' for f in finals)} | "
            f"{np.mean(finals) - base:+.3f} | {best:.3f} | {reach_text} | {fmt(avg(seeds, 'train_reward'), 3)} | "
            f"{fmt(avg(seeds, 'train_std'), 3)} | {fmt(avg(seeds, 'step'))} | {fmt(times['explore'])} | "
            f"{fmt(times['regenerate'])} | {fmt(times['rollout'])} | {fmt(times['reward'])} | {fmt(times['learn'])} | "
            f"{fmt(avg(seeds, 'tau') if times['regenerate'] is not None else None, 3)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", type=int, nargs="+", default=list(range(len(ARMS))), help="arm indices to run")
    parser.add_argument("--fresh", action="store_true", help="rerun (arm, seed) pairs that have saved results")
    args = parser.parse_args()
    results = runs(args)
    world = WORLDS[args.world]
    plot(results, REPO / "docs" / world["figure"], world["label"])
    lines = table(results, args) + [
        "", f"![held-out reward per arm: mean over seeds, the band spans them]({world['figure']})", "",
        "tau-b, chosen 24: Kendall tau-b between the exploration and the regenerated rewards of the chosen seeds, "
        "per prompt, averaged over steps (Sol-RL only: the other arms train on what they explored). Trained reward "
        "mean and std: over the samples the learner trains on, averaged over steps (the std sets the contrast the "
        "advantages normalise away). Steps to 24-of-24's final: the first eval step at which the arm's mean over "
        "seeds reaches the 24-of-24 arm's mean final reward (and how many times fewer than 24-of-24 itself needs)."]
    text = "\n".join(lines) + "\n"
    replace_section(REPO / "docs/benchmarks.md", world["section"], text)
    print(text)


if __name__ == "__main__":
    main()
