"""RL for diffusion LLMs: held-out exact match against RL steps and wall time for diffu-GRPO, coupled diffu-GRPO and
wd1 at equal rollouts (the same prompts, G, rewards, base and eval), and diffu-GRPO with Fast-dLLM rollouts
(threshold + dual cache) against the LLaDA baseline's (one token a step, no cache).

Every arm is a job file of configs/ (dllm_rl_{diffu_grpo,coupled_grpo,wd1}.yaml) with overrides; wall time is the
sum of the RL step times (evals excluded). Each (arm, seed) run is saved to benchmarks/results/dllm_rl/ when it
ends (an interrupted benchmark resumes with the runs it lacks; --fresh reruns). Writes docs/benchmarks.md section
"RL for diffusion LLMs" and docs/dllm_rl.png (mean curves, the band spanning the seeds).
Targets (issue 29): RL raises held-out exact match by >= 20 points within 30 minutes on 2 cores; Fast-dLLM rollouts
reach the baseline-rollout arm's final accuracy in >= 3x less wall time.
Usage: .venv/bin/python benchmarks/dllm_rl.py [--steps 100] [--eval-every 20] [--seeds 0 1] [--arms 0 1 2 3]
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
RESULTS = REPO / "benchmarks/results/dllm_rl"
# The baseline arm's rollouts decode as LLaDA does; its held-out eval decodes as the Fast-dLLM arms' does (their
# rollout policy, greedy), so the two arms' accuracies are like for like.
BASELINE_DECODE = ["rollout.decode.rule=top_k", "rollout.decode.cache=none", "rollout.decode.steps=32",
                   "rollout.eval_decode={gen_length: 32, block_length: 8, rule: threshold, threshold: 0.9, "
                   "cache: dual, temperature: 0.0}"]
ARMS = {
    "diffu-GRPO": ("dllm_rl_diffu_grpo", []),
    "coupled diffu-GRPO": ("dllm_rl_coupled_grpo", []),
    "wd1": ("dllm_rl_wd1", []),
    "diffu-GRPO, baseline rollouts": ("dllm_rl_diffu_grpo", BASELINE_DECODE),
}


def run_arm(index: int, seed: int, args: argparse.Namespace, out: Path) -> dict:
    name = list(ARMS)[index]
    job, extra = ARMS[name]
    cfg = load_job(REPO / f"configs/{job}.yaml", [
        *extra, f"seed={seed}", f"trainer.steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        "trainer.checkpoint_every=0", f"data.heldout={args.heldout}", f"output_dir={out}",
        f"name=arm{index}_seed{seed}"])
    summary = run_job(cfg)
    records = MetricsLog(Path(summary["run_dir"]) / "metrics.jsonl").read()
    wall, walls = 0.0, {0: 0.0}
    for r in records:
        if "time/step" in r:
            wall += r["time/step"]
            walls[r["step"]] = wall
    steps = [r for r in records if "time/step" in r]
    return {"name": name, "seed": seed,
            "curve": [(r["step"], walls[r["step"]], r["eval/headline"]) for r in records if "eval/headline" in r],
            "rollout_s": float(np.mean([r["time/rollout"] for r in steps])),
            "learn_s": float(np.mean([r["time/learn"] for r in steps])),
            "nfe": float(np.mean([r["rollout/nfe"] for r in steps])), "cpus": os.cpu_count()}


def runs(args: argparse.Namespace) -> dict[str, list[dict]]:
    return arm_seed_runs(list(ARMS), args.arms, args.seeds, RESULTS,
                         lambda index, seed, out: run_arm(index, seed, args, out),
                         # an arm's overrides are part of its settings: a saved run under other ones is rerun
                         lambda index: [args.steps, args.eval_every, args.heldout, *ARMS[list(ARMS)[index]][1]],
                         args.fresh)


def mean_curve(seeds: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.array([s for s, _, _ in seeds[0]["curve"]])
    walls = np.array([[w for _, w, _ in r["curve"]] for r in seeds]).mean(0)
    scores = np.array([[v for _, _, v in r["curve"]] for r in seeds])
    return steps, walls, scores


def first_reaching(walls: np.ndarray, values: np.ndarray, target: float) -> float | None:
    hit = np.nonzero(values >= target - 1e-12)[0]
    return float(walls[hit[0]]) if len(hit) else None


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, seeds in results.items():
        steps, walls, scores = mean_curve(seeds)
        for ax, x in zip(axes, (steps, walls / 60)):
            band(ax, x, scores, f"{name} ({len(seeds)} seeds)")
    axes[0].set_xlabel("RL step")
    axes[1].set_xlabel("wall time of the RL steps (min)")
    for ax in axes:
        ax.set_ylabel("held-out exact match")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = arm_parser(__doc__, len(ARMS), 100, 20, [0, 1])
    parser.add_argument("--heldout", type=int, default=200, help="held-out problems (the job files' 64 are noisy: "
                        "one eval's standard error is about 6 points)")
    args = parser.parse_args()
    results = runs(args)
    plot(results, REPO / "docs/dllm_rl.png")
    lines = [
        f"The digit-sorting task (configs/dllm_rl_*.yaml: 8 prompts x 8 completions per step, reward 0.5 char accuracy "
        f"+ 0.5 exact match, held-out: {args.heldout} problems decoded greedily), {args.steps} RL steps, eval every "
        f"{args.eval_every}, training seeds {', '.join(map(str, args.seeds))}; {os.cpu_count()} CPU cores. Wall: the "
        "RL steps' time (evals excluded). Final: the mean of the last two evals (one eval is noisy); peak: the best "
        "eval of the mean curve. `benchmarks/dllm_rl.py`.", "",
        "| arm | base | final, mean | final per seed | gain (points) | peak (step) | wall (min) | rollout s/step | learn s/step | "
        "rollout NFEs per completion |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, seeds in results.items():
        steps, walls, scores = mean_curve(seeds)
        finals, peak = scores[:, -2:].mean(1), int(scores.mean(0).argmax())
        lines.append(f"| {name} | {scores[:, 0].mean():.3f} | {finals.mean():.3f} | "
                     f"{' / '.join(f'{f:.3f}' for f in finals)} | {100 * (finals.mean() - scores[:, 0].mean()):+.1f} | "
                     f"{scores.mean(0)[peak]:.3f} ({steps[peak]}) | "
                     f"{walls[-1] / 60:.1f} | {np.mean([r['rollout_s'] for r in seeds]):.2f} | "
                     f"{np.mean([r['learn_s'] for r in seeds]):.2f} | {np.mean([r['nfe'] for r in seeds]):.1f} |")
    fast, slow = results.get("diffu-GRPO"), results.get("diffu-GRPO, baseline rollouts")
    if fast and slow:
        _, slow_walls, slow_scores = mean_curve(slow)
        target = slow_scores[:, -2:].mean()
        _, fast_walls, fast_scores = mean_curve(fast)
        t_fast = first_reaching(fast_walls, fast_scores.mean(0), target)
        t_slow = first_reaching(slow_walls, slow_scores.mean(0), target)
        per_step = [np.mean([r["rollout_s"] + r["learn_s"] for r in arm]) for arm in (fast, slow)]
        rollout = [np.mean([r["rollout_s"] for r in arm]) for arm in (fast, slow)]
        learn = [per_step[i] - rollout[i] for i in range(2)]
        speed = (f" Per RL step {per_step[0]:.2f} s vs {per_step[1]:.2f} s (**{per_step[1] / per_step[0]:.1f}x**), "
                 f"rollouts alone {rollout[0]:.2f} s vs {rollout[1]:.2f} s ({rollout[1] / rollout[0]:.1f}x). The "
                 f"learner's {learn[0]:.2f} s vs {learn[1]:.2f} s a step is the same work in both arms (the same "
                 "objective on as many completions), so it bounds the per-step ratio, and with it the time-to-accuracy "
                 "one when both arms learn as fast per step: even free rollouts would give "
                 f"{per_step[1] / learn[0]:.1f}x per step.")
        if t_fast == 0:  # the Fast-dLLM base already scores the baseline arm's final
            lines += ["", f"- Fast-dLLM vs baseline rollouts: the Fast-dLLM arm's base "
                      f"({fast_scores[:, 0].mean():.3f}) already scores the baseline-rollout arm's final "
                      f"{target:.3f}, so there is no time-to-accuracy ratio to report." + speed]
        else:
            lines += ["", f"- Fast-dLLM vs baseline rollouts: the baseline-rollout arm's final {target:.3f} is first "
                      f"reached after {t_slow / 60:.1f} min of RL steps by itself and "
                      + ("never by the Fast-dLLM arm" if t_fast is None else
                         f"after {t_fast / 60:.1f} min with Fast-dLLM rollouts: **{t_slow / max(t_fast, 1e-9):.1f}x** "
                         "less wall time (target >= 3x)") + "." + speed]
    lines += ["", "![held-out exact match against RL steps and wall time](dllm_rl.png)"]
    text = "\n".join(lines) + "\n"
    replace_section(REPO / "docs/benchmarks.md", "RL for diffusion LLMs", text)
    print(text)


if __name__ == "__main__":
    main()
