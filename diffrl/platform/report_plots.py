"""The report's data and plots: metrics.jsonl split into steps, evals and summary, and the matplotlib figures
(Agg canvas, no pyplot state) as PNG data URIs."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffrl.platform.reporting import MetricsLog

@dataclass
class Records:
    """metrics.jsonl split by kind: training steps, held-out evals (step 0 is the base model), the final summary."""

    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    summary: dict[str, Any] | None


def read_records(path: Path) -> Records:
    """metrics.jsonl (MetricsLog.read: a last line still being appended is skipped) split into training steps (RL:
    reward/mean; pretraining: train/loss), held-out evals and the summary."""
    records = MetricsLog(path).read()
    summaries = [r for r in records if "summary/final" in r]
    return Records(
        steps=[r for r in records if "reward/mean" in r or "train/loss" in r],
        evals=sorted((r for r in records if "eval/headline" in r), key=lambda r: r["step"]),
        summary=summaries[-1] if summaries else None,
    )


def task_tags(records: list[dict[str, Any]]) -> set[str]:
    """The task tags in records of one kind: the names that follow every metric with per-tag children (`P/<TAG>` for
    each P). A sub-detail such as `geneval_shapes/strict` follows only `geneval_shapes`, so it drops out."""
    keys = set().union(*(r.keys() for r in records))
    children: dict[str, set[str]] = {}
    for key in keys:
        parent, _, name = key.rpartition("/")
        if parent in keys:
            children.setdefault(parent, set()).add(name)
    return set.intersection(*children.values()) if children else set()


def series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of `key` over the records that have it (a JSON NaN stays NaN)."""
    rows = [(r["step"], r[key]) for r in records if key in r]
    steps, values = zip(*rows) if rows else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points that skips NaN (a step without the value does not drag the mean)."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)
    count = counts[end] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, (sums[end] - sums[start]) / count, np.nan)
    # Round-off in the running sums must not make a flat series look noisy (the y axis would zoom in on it).
    return np.clip(mean, values[finite].min(), values[finite].max()) if finite.any() else mean


def _window(n: int) -> int:
    return max(1, n // 15)


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, legend_inches: float = 0.0):
    """A bare Agg figure (no pyplot state) with fixed margins in inches: tight_layout would double the drawing time.
    `legend_inches` leaves room on the right for a legend outside the axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    fig.subplots_adjust(left=0.6 / width, right=1 - (0.15 + legend_inches) / width, bottom=0.45 / height,
                        top=1 - 0.3 / height, wspace=0.35, hspace=0.7)
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return data_uri(buffer.getvalue())


def _finish(ax, title: str, ylabel: str = "") -> None:
    ax.set_title(title, fontsize=9, y=1.0)  # a fixed y skips the title auto-placement (a third of the drawing time)
    ax.set_xlabel("RL step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="y", useOffset=False)  # a flat series would get an offset label over the title
    ax.grid(alpha=0.3)


def plot_reward(records: Records, eval_label: str) -> str | None:
    """plot_reward's figure as a PNG data URI (None: nothing logged yet)."""
    fig = reward_figure(records, eval_label)
    return None if fig is None else _png_uri(fig)


def write_reward_curve(run_dir: Path, eval_label: str) -> Path | None:
    """run_dir/reward_curve.png: the report's reward plot as a file of its own."""
    fig = reward_figure(read_records(run_dir / "metrics.jsonl"), eval_label)
    if fig is None:
        return None
    fig.savefig(run_dir / "reward_curve.png", format="png")
    return run_dir / "reward_curve.png"


def reward_figure(records: Records, eval_label: str):
    """Training reward per step (batch mean and its moving average) with the held-out headline points."""
    steps, values = series(records.steps, "reward/mean")
    eval_steps, eval_values = series(records.evals, "eval/headline")
    if not len(steps) and not len(eval_steps):
        return None
    fig, (ax,) = _figure(9, 4)
    if len(steps):
        window = _window(len(values))
        ax.plot(steps, values, color="tab:blue", alpha=0.3, lw=0.8, label="train reward (batch mean)")
        ax.plot(steps, moving_average(values, window), color="tab:blue", label=f"train reward ({window}-step mean)")
    if len(eval_steps):
        ax.plot(eval_steps, eval_values, "o-", color="tab:red", label=f"held-out {eval_label}")
    _finish(ax, f"training reward and held-out {eval_label}", "reward")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_small_multiples(records: list[dict[str, Any]], keys: list[str]) -> str:
    """One small panel per key against RL step: the values and their moving average; sparse keys as points."""
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = _figure(3.4 * cols, 2.3 * rows, rows, cols)
    for ax, key in zip(axes, keys):
        steps, values = series(records, key)
        finite = np.isfinite(values)
        if len(values) < 40:
            ax.plot(steps[finite], values[finite], "o-", ms=3, lw=1, color="tab:blue")
        else:
            ax.plot(steps[finite], values[finite], color="tab:blue", alpha=0.3, lw=0.7)
            ax.plot(steps, moving_average(values, _window(len(values))), color="tab:blue", lw=1.2)
        if not finite.any():
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        _finish(ax, key)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return _png_uri(fig)


def plot_tasks(records: Records, metric: str, tags: list[str], eval_label: str) -> str:
    """Per task tag: the training tag series smoothed (lines) and held-out eval per tag (points, same colour)."""
    fig, (ax,) = _figure(10, 4.2, legend_inches=1.9)
    colors = [f"C{i % 10}" for i in range(len(tags))]
    for tag, color in zip(tags, colors):
        steps, values = series(records.steps, f"reward/{metric}/{tag}")
        if len(steps):
            ax.plot(steps, moving_average(values, _window(len(values))), color=color, label=f"{tag} (train)")
        eval_steps, eval_values = series(records.evals, f"eval/{metric}/{tag}")
        if len(eval_steps):
            ax.plot(eval_steps, eval_values, "o--", color=color, ms=5, lw=0.8, label=f"{tag} (held-out)")
    _finish(ax, f"{metric} per task type ({eval_label})", metric)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    return _png_uri(fig)


def plot_stage_times(records: list[dict[str, Any]], stages: list[str]) -> str:
    """Seconds per stage per step, stacked; `time/step` is their total and is left out."""
    steps = np.asarray([r["step"] for r in records], dtype=float)
    stacks = [np.nan_to_num(np.asarray([r.get(f"time/{s}", 0.0) for r in records], dtype=float)) for s in stages]
    fig, (ax,) = _figure(10, 3.6, legend_inches=1.1)
    ax.stackplot(steps, *stacks, labels=stages, alpha=0.85)
    _finish(ax, f"time per stage (mean step {sum(stacks).mean():.2f} s)", "seconds")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)  # top first
    return _png_uri(fig)
