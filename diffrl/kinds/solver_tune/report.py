"""The solver-tuning figure: held-out reward and distance to the reference against NFE, one line per candidate
(the reference sampler's reward as a dashed line). It goes to tune.png and into the run report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffrl.platform.report_html import write_figure  # noqa: E402


def write_tune_figure(rows: list[dict[str, Any]], run_dir: Path, eval_label: str) -> Path:
    reference = rows[0]
    fig, (reward_ax, distance_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(r["candidate"] for r in rows[1:]):
        mine = sorted((r for r in rows[1:] if r["candidate"] == name), key=lambda r: r["nfe"])
        nfes = [r["nfe"] for r in mine]
        reward_ax.plot(nfes, [r["reward"] for r in mine], marker="o", label=name)
        distance_ax.plot(nfes, [r["distance"] for r in mine], marker="o", label=name)
    reward_ax.axhline(reference["reward"], color="gray", linestyle="--",
                      label=f"reference ({reference['nfe']} Euler steps)")
    reward_ax.set(xlabel="NFE (model calls per sample)", ylabel=f"held-out {eval_label}", title="Reward")
    distance_ax.set(xlabel="NFE (model calls per sample)", ylabel="mean squared distance", yscale="log",
                    title="Distance to the reference samples (same seeds)")
    for ax in (reward_ax, distance_ax):
        ax.grid(alpha=0.3)
    reward_ax.legend(fontsize=8)
    fig.tight_layout()
    caption = ("Held-out reward (left) and distance to the reference sampler's samples from the same seeds (right) "
               "against NFE, per candidate sampler and time grid")
    return write_figure(run_dir, "tune", fig, "Solver tuning", caption)
