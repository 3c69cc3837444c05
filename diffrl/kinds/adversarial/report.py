"""The adversarial job's figure: the robustness curve (denoising error against perturbation size) at each eval, and
the few-step sample quality (GenEval-shapes or Frechet distance per NFE) over training. It goes to
figures/adversarial.png and into the run report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffrl.platform.report_html import write_figure  # noqa: E402


def write_adversarial_figure(evaluations: list[tuple[int, dict]], run_dir: Path, cfg) -> Path:
    fig, (robust_ax, quality_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    radii = cfg.eval.robustness_radii
    for step, metrics in evaluations:
        robust_ax.plot(radii, [metrics[f"eval/robust/eta{eta:g}"] for eta in radii], marker="o", label=f"step {step}")
    robust_ax.set(xlabel="perturbation size eta (L2 norm eta * sqrt(D))", ylabel="x0 error (MSE)",
                  title=f"Denoising error under {cfg.eval.attack} perturbations")
    key = "geneval" if cfg.data.source == "shapes" else "fd"
    steps = [step for step, _ in evaluations]
    for nfe in cfg.eval.nfe:
        quality_ax.plot(steps, [m[f"eval/nfe{nfe}/{key}"] for _, m in evaluations], marker="o", label=f"NFE {nfe}")
    quality_ax.set(xlabel="minibatch step", title="Few-step sample quality",
                   ylabel="held-out GenEval-shapes strict" if key == "geneval" else "Frechet distance (shapes features)")
    for ax in (robust_ax, quality_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    caption = (f"Left: x0-prediction error on held-out images, averaged over t in {cfg.eval.robustness_times}, as "
               f"the input perturbation grows. Right: held-out sample quality at each eval NFE.")
    return write_figure(run_dir, "adversarial", fig, "Adversarial training", caption)
