"""Flow-GRPO vs AWM vs DiffusionNFT vs the peers' objectives (GRPO-Guard, MixGRPO and MixGRPO-Flash, DGPO,
Diffusion-DPO, Flow-GRPO's no-CFG CPS recipe) on the shapes world (or AWM vs Flow-GRPO on the scenes world): held-out
reward against rollout NFEs and wall time.

Every method runs its job file (configs/shapes_<method>.yaml) with the same prompts, seeds, reward, model,
step count and eval schedule. Rollout NFEs = samples x model calls per sample (the sampler steps; MixGRPO-Flash's
compressed tail makes fewer; no CFG in these jobs); eval NFEs are not
counted. Wall time is the sum of the RL step times (eval excluded). Writes the table into docs/benchmarks.md (section
"Method comparison") and the plot to docs/compare_methods.png.

With several training seeds (--seeds; the held-out eval seeds are the same for every run) the table gives the mean
and per-seed finals, the plot the mean curve with a band spanning the seeds, and the NFE ratio is reported on the
mean curves and per seed. Each (method, seed) run is saved to benchmarks/results/compare_methods/ when it ends, so an
interrupted benchmark resumes with the runs it lacks (--fresh reruns them).

`--world scenes` runs the scenes world's job files (configs/scenes_<method>.yaml: Flow-GRPO, AWM, DiffusionNFT) into
benchmarks/results/compare_methods_scenes/, docs section "AWM vs Flow-GRPO: scenes world" and
docs/compare_methods_scenes.png. There Flow-GRPO's plateau is the mean of its mean curve's last --plateau-window
evals (default 3 on scenes, 1 on shapes: the final eval), so that one noisy eval does not set it; --awm-steps and
--awm-every give AWM its own schedule (it is expected to get there sooner, so it is evaluated more densely).

Target (issues 4 and 28): AWM reaches Flow-GRPO's final (scenes: plateau) held-out reward with at least 8x fewer
rollout NFEs.
Usage: .venv/bin/python benchmarks/compare_methods.py [--world shapes] [--steps 200] [--eval-every 25]
       [--eval-seeds 16] [--seeds 0] [--early-steps 0] [--early-every 10] [--awm-steps N] [--awm-every N]
       [--plateau-window N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docs_table import replace_section  # noqa: E402
from saved_runs import saved_or_run  # noqa: E402

from diffrl.algorithms.mixgrpo import compressed_tail, window_start  # noqa: E402
from diffrl.kinds import load_job  # noqa: E402
from diffrl.kinds import run_job  # noqa: E402
from diffrl.platform.reporting import MetricsLog  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORLDS = {
    "shapes": {"results": "compare_methods", "section": "Method comparison", "figure": "compare_methods.png",
               "label": "GenEval-shapes (strict)", "plateau_window": 1, "what": "Shapes world"},
    "scenes": {"results": "compare_methods_scenes", "section": "AWM vs Flow-GRPO: scenes world",
               "figure": "compare_methods_scenes.png", "label": "GenEval-scenes (strict)", "plateau_window": 3,
               "what": "Scenes world (`builtin:scenes_base`, reward 0.5 GenEval-scenes partial credit + 0.5 "
                       "scenes_preference)"},
}
METHODS = {"flow_grpo": "Flow-GRPO", "awm": "AWM", "nft": "DiffusionNFT", "grpo_guard": "GRPO-Guard",
           "mixgrpo": "MixGRPO", "mixgrpo_flash": "MixGRPO-Flash", "dgpo": "DGPO", "diffusion_dpo": "Diffusion-DPO",
           "flow_grpo_cps": "Flow-GRPO, no CFG + CPS window"}


def rollout_nfe(cfg, step: int) -> int:
    """Model calls per rollout sample at RL step `step` (0-based): the sampler steps, or for MixGRPO-Flash the steps
    up to the window's end plus the DPM-Solver++ tail's."""
    steps, compress = cfg.rollout.num_steps, cfg.rollout.window_tail_compress
    if compress is None:
        return steps
    section = cfg.learner.mixgrpo
    start = window_start(step, section.shift_every, section.stride, steps - 1 - cfg.rollout.sde_window,
                         section.roll_back)
    end = start + cfg.rollout.sde_window
    return end + len(compressed_tail(end, steps, compress)) - 1


def run_method(method: str, seed: int, args: argparse.Namespace, out: Path, steps: int, every: int) -> dict:
    cfg = load_job(REPO / f"configs/{args.world}_{method}.yaml", [
        f"seed={seed}", f"trainer.steps={steps}", f"trainer.eval_every={every}",
        f"trainer.eval_seeds_per_prompt={args.eval_seeds}", f"output_dir={out}", f"name={method}_seed{seed}",
    ])
    summary = run_job(cfg)
    records = MetricsLog(Path(summary["run_dir"]) / "metrics.jsonl").read()
    samples = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    wall, walls, nfe, nfes = 0.0, {0: 0.0}, 0, {0: 0}
    for r in records:
        if "time/step" in r:
            wall += r["time/step"]
            nfe += round(samples * r.get("rollout/nfe", rollout_nfe(cfg, r["step"] - 1)))  # logged since issue 30
            walls[r["step"]], nfes[r["step"]] = wall, nfe
    curve = [(r["step"], nfes[r["step"]], walls[r["step"]], r["eval/headline"])
             for r in records if "eval/headline" in r]
    return {"method": method, "seed": seed, "curve": curve, "step_time": wall / max(steps, 1),
            "settings": [steps, every, args.eval_seeds], "cpu": cpu_model()}


def cpu_model() -> str:
    """The CPU the run was measured on (results saved in different sessions may come from different machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def results_dir(args: argparse.Namespace) -> Path:
    return REPO / "benchmarks/results" / WORLDS[args.world]["results"]


def schedule(method: str, args: argparse.Namespace) -> tuple[int, int]:
    """(steps, eval interval) of `method`'s runs: AWM's own with --awm-steps / --awm-every, else the common one."""
    if method == "awm":
        return args.awm_steps or args.steps, args.awm_every or args.eval_every
    return args.steps, args.eval_every


def cached(method: str, seed: int, args: argparse.Namespace, steps: int, every: int, tag: str = "") -> dict:
    """One run's result, from its saved file or by running it."""
    def run() -> dict:
        print(f"== {METHODS[method]}{tag}, seed {seed}: {steps} steps, evals every {every}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            return run_method(method, seed, args, Path(tmp), steps, every)

    return saved_or_run(results_dir(args) / f"{method}{tag}_seed{seed}.json", run,
                        lambda saved: saved["settings"] == [steps, every, args.eval_seeds], args.fresh)


def runs(methods: list[str], args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every (method, seed) result. With --early-steps, AWM's curve also gets the evals of a short run that evaluates
    every --early-every steps (a run's training does not depend on its eval schedule: both runs must agree on the
    evals they share, which is checked), so the NFE ratio is not bounded by the first regular eval."""
    out: dict[str, list[dict]] = {}
    for method in methods:
        for seed in args.seeds:
            if args.saved_only and not (results_dir(args) / f"{method}_seed{seed}.json").is_file():
                print(f"-- {METHODS[method]}, seed {seed}: no saved run, left out (--saved-only)", flush=True)
                continue
            result = cached(method, seed, args, *schedule(method, args))
            if method == "awm" and args.early_steps:
                early = cached(method, seed, args, args.early_steps, args.early_every, "_early")
                merged = {p[0]: p for p in result["curve"]}
                for point in early["curve"]:
                    if point[0] in merged and merged[point[0]][3] != point[3]:
                        raise SystemExit(f"AWM seed {seed}: the early run's eval at step {point[0]} ({point[3]}) "
                                         f"differs from the full run's ({merged[point[0]][3]})")
                    merged.setdefault(point[0], point)
                result = {**result, "curve": [merged[step] for step in sorted(merged)]}
            out.setdefault(method, []).append(result)
    return out


def mean_curve(seeds: list[dict]) -> list[tuple]:
    """(step, NFEs, wall, mean score) over the seeds, eval by eval; the wall is the fastest seed's (other work on the
    machine only slows a run down, while its rewards and NFEs do not depend on it)."""
    return [(points[0][0], points[0][1], float(np.min([p[2] for p in points])), float(np.mean([p[3] for p in points])))
            for points in zip(*(r["curve"] for r in seeds))]


def first_reaching(curve: list[tuple], target: float) -> tuple | None:
    return next((point for point in curve if point[3] >= target), None)


def plot(results: dict[str, list[dict]], path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, seeds in results.items():
        _, nfes, walls, scores = zip(*mean_curve(seeds))
        every = np.array([[p[3] for p in r["curve"]] for r in seeds])
        label = f"{METHODS[method]} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        for ax, xs in ((axes[0], nfes), (axes[1], walls)):
            line, = ax.plot(xs, scores, marker="o", label=label)
            if len(seeds) > 1:
                ax.fill_between(xs, every.min(0), every.max(0), color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("rollout NFEs")
    axes[1].set_xlabel("wall time of RL steps (s, the fastest seed's)")
    for ax in axes:
        ax.set_ylabel(f"held-out {ylabel}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plateau(curve: list[tuple], window: int) -> float:
    """The mean held-out reward of the curve's last `window` evals (1: the final eval)."""
    return float(np.mean([point[3] for point in curve[-window:]]))


def verdict(label: str, grpo: list[tuple], other: list[tuple], method: str, steps: int, window: int = 1) -> str:
    """Where `method` first reaches Flow-GRPO's final held-out reward (window > 1: the mean of its last `window`
    evals, its plateau), in rollout NFEs against the NFEs after which Flow-GRPO's own curve first reaches it."""
    name, target = METHODS[method], plateau(grpo, window)
    what = "final held-out reward" if window == 1 else f"plateau (the mean of its last {window} evals)"
    grpo_point, point = first_reaching(grpo, target), first_reaching(other, target)
    if point is None:
        return f"{label}: {name} never reached Flow-GRPO's {what} {target:.3f} within {steps} steps."
    if point[1] == 0:
        return f"{label}: the base model already scores Flow-GRPO's {what} {target:.3f}."
    speedup = grpo_point[1] / point[1]
    claim = (f" ({'meets' if speedup >= 8 else 'misses'} the 8x target; the AWM paper reports up to 24x)"
             if method == "awm" else "")
    return (f"{label}: Flow-GRPO's {what} {target:.3f} (first reached after {grpo_point[1]} rollout "
            f"NFEs) is reached by {name} after {round(point[1])} NFEs: **{speedup:.1f}x fewer NFEs**{claim}"
            + (f"; {name} does not hold it: its own final is {other[-1][3]:.3f}." if other[-1][3] < target else "."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-seeds", type=int, default=16)
    parser.add_argument("--methods", default="flow_grpo,awm,nft")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per method")
    parser.add_argument("--fresh", action="store_true", help="rerun saved (method, seed) results")
    parser.add_argument("--early-steps", type=int, default=0, help="a short AWM run with denser evals (0: none)")
    parser.add_argument("--early-every", type=int, default=10, help="its eval interval")
    parser.add_argument("--saved-only", action="store_true", help="table and plot from the saved runs only; "
                        "(method, seed) pairs without one are left out (the table shows each method's seeds)")
    parser.add_argument("--awm-steps", type=int, default=0, help="AWM's steps (0: --steps)")
    parser.add_argument("--awm-every", type=int, default=0, help="AWM's eval interval (0: --eval-every)")
    parser.add_argument("--plateau-window", type=int, default=0,
                        help="Flow-GRPO's plateau: the mean of its last N evals (0: the world's default)")
    args = parser.parse_args()
    world = WORLDS[args.world]
    window = args.plateau_window or world["plateau_window"]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; allowed: {sorted(METHODS)}")
    missing = [m for m in methods if not (REPO / f"configs/{args.world}_{m}.yaml").is_file()]
    if missing:
        parser.error(f"no job file configs/{args.world}_<method>.yaml for {missing} on the {args.world} world")
    results = runs(methods, args)
    plot(results, REPO / "docs" / world["figure"], world["label"])

    rows = ["| method | base | final, mean | final per seed | best, mean | rollout NFEs per step "
            "| RL step (s), fastest seed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for method, seeds in results.items():
        curve = mean_curve(seeds)
        finals = " / ".join(f"{r['curve'][-1][3]:.3f}" for r in seeds)
        per_step = round(curve[-1][1] / curve[-1][0]) if len(curve) > 1 else 0  # mean (MixGRPO-Flash's varies)
        rows.append(f"| {METHODS[method]} | {curve[0][3]:.3f} | {curve[-1][3]:.3f} | {finals} | "
                    f"{max(p[3] for p in curve):.3f} | {per_step} | {min(r['step_time'] for r in seeds):.2f} |")
    lines = [
        f"{world['what']}, {args.steps} RL steps per method"
        + (f" (AWM {schedule('awm', args)[0]}, evaluated every {schedule('awm', args)[1]})"
           if schedule("awm", args) != (args.steps, args.eval_every) and "awm" in results else "")
        + " (8 prompts x 8 samples, 10 sampler steps), held-out eval "
        f"every {args.eval_every} steps with {args.eval_seeds} seeds per prompt (the same for every run), training "
        f"seeds {', '.join(map(str, args.seeds))} (each method's in its per-seed column), on {os.cpu_count()} CPU "
        "cores. Step and wall times are the fastest seed's (other work on the machine only slows a run; the held-out "
        "rewards and NFEs do not depend on it).",
        "", *rows, "", f"![held-out reward vs rollout NFEs and wall time]({world['figure']})", "",
    ]
    if args.early_steps and "awm" in results:
        lines[0] += (f" AWM's first {args.early_steps} steps are also evaluated every {args.early_every} steps (a "
                     "second run per seed, whose evals at the steps both runs evaluate are identical to the full "
                     "run's: training does not depend on the eval schedule), so its NFE count is not bounded below "
                     "by the first regular eval.")
    for method in [m for m in results if m != "flow_grpo" and "flow_grpo" in results]:
        grpo, other = results["flow_grpo"], results[method]
        if len(args.seeds) > 1:
            lines.append("- " + verdict("Mean curves", mean_curve(grpo), mean_curve(other), method,
                                        schedule(method, args)[0], window))
        for g, o in zip(grpo, other):
            lines.append("- " + verdict(f"Seed {g['seed']}", g["curve"], o["curve"], method,
                                        schedule(method, args)[0], window))
    machines = {method: sorted({r.get("cpu", "an earlier machine") for r in seeds}) for method, seeds in results.items()}
    if len({cpu for cpus in machines.values() for cpu in cpus}) > 1:
        lines.append("- The runs were measured on more than one machine of the same kind ("
                     + "; ".join(f"{METHODS[m]}: {', '.join(cpus)}" for m, cpus in machines.items())
                     + "): step times compare only within about 1.5x across machines.")
    text = "\n".join(lines) + "\n"
    replace_section(REPO / "docs/benchmarks.md", world["section"], text)
    print(text)


if __name__ == "__main__":
    main()
