"""Adversarial vs standard fine-tuning of the shipped shapes base at equal optimizer steps (ICLR 2025, kugwzk/AT_Diff).

Both runs are `configs/adversarial_shapes.yaml` from builtin:shapes_base with the same learning rate, EMA and data
stream: standard fine-tuning is learner.adversarial.adv_steps=1 for S optimizer steps (S minibatches); free
adversarial training is adv_steps=A for S / A minibatches (A optimizer steps each), so both make S optimizer steps.
The EMA of each is evaluated on the held-out prompts: GenEval-shapes (strict) and the Frechet distance to real
renders at NFE 5 and 10, and the x0 error under one-step L2 attacks of growing size.

Targets (the issue): adversarial ahead by at least 0.03 held-out GenEval-shapes at NFE 5, and 20% lower error under
perturbation. Writes the section "Adversarial training" of docs/benchmarks.md and docs/adversarial.png.
Usage: .venv/bin/python benchmarks/adversarial.py [--optimizer-steps 450] [--adv-steps 3] [--eval-seeds 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from docs_table import replace_section  # noqa: E402

from diffrl.kinds import load_job, run_job  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NFES = (5, 10)
# Measured once with `learner.adversarial.adv_lr=2.6` (diffrl run configs/adversarial_shapes.yaml, 150 minibatches,
# the same eval seeds); kept in the section so that a rerun does not drop the explanation of a missed target.
DIAGNOSIS = """
Why the shapes world does not show the paper's gain (measured):

- AT_Diff's step alpha = 0.1 is an L2 length: over D = 2700 dimensions the perturbation after A - 1 = 2 steps is
  at most 0.2 in norm (0.004 per pixel RMS), 26x inside the projection ball eta * sqrt(D) = 5.2, so the training
  perturbation is far smaller than the attacks measured (eta 0.05-0.4 per pixel RMS) and the run is close to
  standard fine-tuning (as the table shows).
- With steps that do reach the ball (`learner.adversarial.adv_lr=2.6`, same 450 optimizer steps, measured
  separately with the same seeds): GenEval-shapes 0.316 at NFE 5 and 0.414 at NFE 10, FD 8.84 / 8.37, error
  under attack 0.0415 at eta 0.1 (4% below standard) and 0.0833 at eta 0.4 (5% above), while the clean error
  grew 3.5x (0.0045 vs 0.0013).
- The cause: the shapes world is nearly deterministic given x_t (the clean x0 error at t <= 0.5 is about 0.001),
  so the MMSE denoiser is a sharp function of its input. A perturbation along the gradient moves x_t towards a
  different image, and a target of "the same x0" conflicts with what that input implies: the network trades clean
  accuracy for little robustness. The few-step error of this x0-prediction model comes from Euler discretization
  of its sharp predictions (blur at NFE 5), not from sensitivity to small input shifts, which is what AT removes.
  The paper's gains (CIFAR-10, ImageNet) are on data whose denoisers average over many plausible images.
"""


def fine_tune(name: str, adv_steps: int, optimizer_steps: int, args, out: Path) -> tuple[dict, dict, float]:
    """(base metrics, final metrics, seconds) of one run."""
    minibatches = optimizer_steps // adv_steps
    cfg = load_job(REPO / "configs/adversarial_shapes.yaml", [
        f"name={name}", f"output_dir={out}", f"learner.adversarial.adv_steps={adv_steps}",
        f"trainer.steps={minibatches}", f"trainer.eval_every={minibatches}", "trainer.checkpoint_every=0",
        *([f"learner.lr={args.lr}"] if args.lr else []), f"eval.seeds_per_prompt={args.eval_seeds}", f"eval.real_per_prompt={args.eval_seeds}",
        f"eval.robustness_samples={args.robust_samples}", f"eval.nfe=[{','.join(map(str, NFES))}]",
        "trainer.wandb.mode=disabled"])
    tick = time.perf_counter()
    summary = run_job(cfg)
    evaluations = dict((step, metrics) for step, metrics in summary["evaluations"])
    return evaluations[0], evaluations[minibatches], time.perf_counter() - tick


def table(rows: list[tuple[str, dict]], radii: list[float]) -> str:
    head = ["run"] + [f"GenEval@{n}" for n in NFES] + [f"FD@{n}" for n in NFES] + [f"error eta={r:g}" for r in radii]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, m in rows:
        cells = ([f"{m[f'eval/nfe{n}/geneval']:.3f}" for n in NFES] + [f"{m[f'eval/nfe{n}/fd']:.2f}" for n in NFES]
                 + [f"{m[f'eval/robust/eta{r:g}']:.4f}" for r in radii])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: list[tuple[str, dict]], radii: list[float], path: Path) -> None:
    fig, (robust_ax, quality_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, m in rows:
        robust_ax.plot(radii, [m[f"eval/robust/eta{r:g}"] for r in radii], marker="o", label=name)
        quality_ax.plot(NFES, [m[f"eval/nfe{n}/geneval"] for n in NFES], marker="o", label=name)
    robust_ax.set(xlabel="attack size eta (L2 norm eta * sqrt(D))", ylabel="x0 error (MSE)",
                  title="Denoising error under one-step L2 attacks")
    quality_ax.set(xlabel="NFE (ODE steps)", ylabel="held-out GenEval-shapes strict", title="Few-step sample quality")
    for ax in (robust_ax, quality_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer-steps", type=int, default=450)
    parser.add_argument("--adv-steps", type=int, default=3)
    parser.add_argument("--eval-seeds", type=int, default=32)
    parser.add_argument("--robust-samples", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="default: the job file's")
    parser.add_argument("--no-docs", action="store_true", help="print the section instead of writing docs/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, standard, standard_s = fine_tune("standard", 1, args.optimizer_steps, args, Path(tmp))
        _, adversarial, adversarial_s = fine_tune("adversarial", args.adv_steps, args.optimizer_steps, args, Path(tmp))
    job = load_job(REPO / "configs/adversarial_shapes.yaml")
    radii, lr = job.eval.robustness_radii, args.lr or job.learner.lr
    rows = [("base (builtin:shapes_base)", base), (f"standard, {args.optimizer_steps} steps", standard),
            (f"adversarial A={args.adv_steps}, {args.optimizer_steps} steps", adversarial)]
    gain = adversarial["eval/nfe5/geneval"] - standard["eval/nfe5/geneval"]
    reductions = {r: 1 - adversarial[f"eval/robust/eta{r:g}"] / standard[f"eval/robust/eta{r:g}"] for r in radii if r}
    # The robustness target is read at the training radius eta = adv_max_norm (the other radii are reported).
    target_eta = job.learner.adversarial.adv_max_norm
    quality_met, robust_met = gain >= 0.03, reductions[target_eta] >= 0.2
    body = f"""`.venv/bin/python benchmarks/adversarial.py`: free adversarial fine-tuning vs standard fine-tuning of
builtin:shapes_base at equal optimizer steps ({args.optimizer_steps}; adversarial: {args.optimizer_steps //
args.adv_steps} minibatches x A = {args.adv_steps}, alpha 0.1, eta 0.1; both lr {lr:g}, batch 64, EMA {job.learner.adversarial.ema_decay:g}).
Held-out: {args.eval_seeds} seeds per held-out prompt (GenEval-shapes strict; FD against {args.eval_seeds} real
renders per prompt in the shapes feature space); robustness: {args.robust_samples} held-out renders, x0 MSE under a
one-step L2 attack of norm eta * sqrt(D), averaged over t in 0.25, 0.5, 0.75. Wall clock: standard
{standard_s:.0f} s, adversarial {adversarial_s:.0f} s (2 CPU cores, evals included).

{table(rows, radii)}

- NFE 5: adversarial - standard = {gain:+.3f} GenEval-shapes (target >= +0.03: {'met' if quality_met else 'missed'}).
- Error under attack, adversarial vs standard: {', '.join(f'eta {r:g}: {abs(100 * v):.0f}% ' + ('lower' if v >= 0 else 'higher') for r, v in reductions.items())}
  (target 20% lower at eta {target_eta:g}, the training radius: {'met' if robust_met else 'missed'}).

![robustness and few-step quality](adversarial.png)
{DIAGNOSIS}"""
    if args.no_docs:
        print(body)
        return
    figure(rows, radii, REPO / "docs/adversarial.png")
    replace_section(REPO / "docs/benchmarks.md", "Adversarial training", body)
    print(body)


if __name__ == "__main__":
    main()
