"""runs/NAME/report.html: one self-contained page built from what a run directory holds.

Plots are drawn with matplotlib's Agg canvas and, like the sample grids, embedded as PNG data URIs, so the file can be
copied or attached on its own and opened without a network. It reads a run in progress (only the base eval, an empty
metrics file, no "after" grid yet) as well as a finished one: the training loop rewrites it after every eval and at
the end, and `diffrl report RUN_DIR` rebuilds it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

STAGE_ORDER = ("rollout", "explore", "regenerate", "reward", "audit", "learn", "sync")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk and its CRC: a grid still being written does not end with it
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} section{margin:2em 0} img{max-width:100%;height:auto;border:1px solid #ddd}
table{border-collapse:collapse} td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:top}
.note{color:#777;font-style:italic} figure{margin:1em 0} figcaption{font-size:.9em}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}
"""


class NotARunDirectory(ValueError):
    """The path has neither metrics.jsonl nor config.yaml."""


@dataclass
class Records:
    """metrics.jsonl split by kind: training steps, held-out evals (step 0 is the base model), the final summary."""

    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    summary: dict[str, Any] | None


def read_records(path: Path) -> Records:
    """Every complete line of metrics.jsonl; a trailing line without its newline is still being appended."""
    lines = path.read_bytes().split(b"\n")[:-1] if path.exists() else []
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ValueError(f"{path}:{number}: not a JSON record") from None
    summaries = [r for r in records if "summary/final" in r]
    return Records(
        steps=[r for r in records if "reward/mean" in r],
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


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return _data_uri(buffer.getvalue())


def _finish(ax, title: str, ylabel: str = "") -> None:
    ax.set_title(title, fontsize=9, y=1.0)  # a fixed y skips the title auto-placement (a third of the drawing time)
    ax.set_xlabel("RL step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="y", useOffset=False)  # a flat series would get an offset label over the title
    ax.grid(alpha=0.3)


def plot_reward(records: Records, eval_label: str) -> str | None:
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
    return _png_uri(fig)


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


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _keys(records: list[dict[str, Any]], prefix: str) -> list[str]:
    return sorted({k for r in records for k in r if k.startswith(prefix)})


def _headline_metric(config: dict[str, Any], records: Records) -> str | None:
    """trainer.eval_metric, or (config without it) the eval detail that equals the headline in the latest eval."""
    metric = (config.get("trainer") or {}).get("eval_metric")
    if metric or not records.evals:
        return metric
    last = records.evals[-1]
    matches = [k[len("eval/"):] for k, v in last.items() if k not in ("eval/headline", "eval/reward")
               and k.startswith("eval/") and v == last["eval/headline"]]
    return min(matches, key=len) if matches else None


def _grid_uri(path: Path) -> str | None:
    data = path.read_bytes() if path.exists() else b""
    if not (data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)):
        return None
    return _data_uri(data)


def _latest_checkpoint(run_dir: Path) -> int | None:
    """The newest complete checkpoints/step_XXXXXX: committed under its final name, with the manifest that
    diffrl/platform/checkpoint.py writes last (files are not re-hashed here: the report must stay fast)."""
    steps = [int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*")
             if re.fullmatch(r"step_\d+", p.name) and (p / "manifest.json").is_file()]
    return max(steps) if steps else None


def _quantization_line(run_dir: Path) -> str | None:
    path = run_dir / "quantization.json"
    try:
        groups = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return None
    parts = [f"{name}: {sum(bool(layer.get('quantized')) for layer in layers)}/{len(layers)} linear layers quantized"
             for name, layers in groups.items() if isinstance(layers, list)]
    return "; ".join(parts) or None


def _header(run_dir: Path, config: dict[str, Any], records: Records) -> str:
    learner, rollout = config.get("learner") or {}, config.get("rollout") or {}
    eval_label = (config.get("trainer") or {}).get("eval_label", "headline")
    name = config.get("name") or run_dir.name
    last_step = max((r["step"] for r in records.steps), default=0)
    evals = [(r["step"], r["eval/headline"]) for r in records.evals]
    if len(evals) > 1:
        headline = f"base {evals[0][1]:.3f} &rarr; {evals[-1][1]:.3f} (step {evals[-1][0]})"
    elif evals:
        headline = f"base {evals[0][1]:.3f} (no later eval yet)"
    else:
        headline = "not yet available"
    checkpoint = _latest_checkpoint(run_dir)
    rows = [("run", html.escape(str(name))), ("algorithm", html.escape(str(learner.get("algorithm", "?")))),
            ("rollout strategy", html.escape(str(rollout.get("strategy", "?")))),
            ("status", "finished" if records.summary else "in progress"),
            ("last step", str(last_step)), (f"held-out {html.escape(eval_label)}", headline),
            ("latest checkpoint", f"step {checkpoint}" if checkpoint is not None else "none"),
            ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    quantization = _quantization_line(run_dir)
    if quantization:
        rows.insert(3, ("low precision", html.escape(quantization)))
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return (f'<header id="summary"><h1>{html.escape(str(name))}</h1>\n<table>\n{table}\n</table>\n'
            f"<p>Run directory: <code>{html.escape(str(run_dir))}</code></p></header>")


def _samples_section(run_dir: Path) -> str:
    try:
        meta = json.loads((run_dir / "samples.json").read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    figures = []
    for which in ("before", "after"):
        info = meta.get(which) or {}
        title = info.get("title") or f"{which} RL"
        uri = _grid_uri(run_dir / f"samples_{which}.png")
        if uri is None:
            when = "after the base eval" if which == "before" else "after the last step"
            figures.append(f"<h3>{html.escape(title)}</h3>" + _note(f"Not yet available (written {when})."))
            continue
        prompts = "".join(f"<li>{html.escape(p)}</li>" for p in info.get("prompts", []))
        step = f" at step {info['step']}" if "step" in info else ""
        alt = f"Sample grid {which} RL{step}: one held-out prompt per row, samples from fixed seeds"
        figures.append(f"<figure>{_img(uri, alt)}<figcaption><b>{html.escape(title)}</b>"
                       f"{'<ol>' + prompts + '</ol>' if prompts else ''}</figcaption></figure>")
    return _section("samples", "Samples before and after RL", "\n".join(figures))


def _plot_sections(config: dict[str, Any], records: Records) -> list[str]:
    """The plot sections; each says "not yet available" when the run has not logged what it needs."""
    steps, evals = records.steps, records.evals
    eval_label = (config.get("trainer") or {}).get("eval_label", "headline")
    missing = "no training step logged yet" if not steps else "this run does not log it"
    sections = []

    uri = plot_reward(records, eval_label)
    eval_steps = ", ".join(str(r["step"]) for r in evals) or "none yet"
    body = _img(uri, f"Training reward per RL step (batch mean and moving average) and held-out {eval_label} at "
                     f"steps {eval_steps}") if uri else _note("Not yet available: no step or eval logged yet.")
    sections.append(_section("reward", "Reward", body))

    tags = task_tags(evals) or task_tags(steps)
    rewards = set(_keys(steps, "reward/")) - {"reward/mean", "reward/std"}
    details = sorted(k for k in rewards if not (k.rpartition("/")[2] in tags and k.rpartition("/")[0] in rewards))
    body = _img(plot_small_multiples(steps, details), "Training reward per detail against RL step, one panel each: "
                + ", ".join(details)) if details else _note(f"Not yet available: {missing}.")
    sections.append(_section("reward-details", "Reward details (training)", body))

    metric = _headline_metric(config, records)
    logged = set(_keys(steps, f"reward/{metric}/")) | set(_keys(evals, f"eval/{metric}/"))
    present = sorted(t for t in tags if f"reward/{metric}/{t}" in logged or f"eval/{metric}/{t}" in logged)
    body = _img(plot_tasks(records, metric, present, eval_label), f"{metric} per task type ({', '.join(present)}): "
                "training moving average as lines, held-out eval as points") if present else \
        _note("Not yet available: no per-task metric logged (no eval yet, or prompts without task tags).")
    sections.append(_section("tasks", "Per task type", body))

    sol = _keys(steps, "sol/")
    if sol:
        alt = "Sol-RL fidelity of the low-precision exploration copy against RL step, one panel each: " + ", ".join(sol)
        sections.append(_section("sol-fidelity", "Sol-RL fidelity", _img(plot_small_multiples(steps, sol), alt)))

    found = {k[len("time/"):] for k in _keys(steps, "time/")} - {"step"}
    stages = [s for s in STAGE_ORDER if s in found] + sorted(found - set(STAGE_ORDER))
    body = _img(plot_stage_times(steps, stages), "Seconds per stage per RL step, stacked: " + ", ".join(stages)) \
        if stages else _note(f"Not yet available: {missing}.")
    sections.append(_section("timing", "Time per stage", body))

    losses = _keys(steps, "train/")
    body = _img(plot_small_multiples(steps, losses), "Learner statistics against RL step, one panel each: "
                + ", ".join(losses)) if losses else _note(f"Not yet available: {missing}.")
    sections.append(_section("losses", "Learner statistics", body))
    return sections


def render_report(run_dir: Path) -> str:
    """The report's HTML for `run_dir` as it is now."""
    config_path = run_dir / "config.yaml"
    if not (run_dir / "metrics.jsonl").exists() and not config_path.exists():
        raise NotARunDirectory(f"{run_dir}: not a run directory (no metrics.jsonl or config.yaml)")
    config_text = config_path.read_text() if config_path.exists() else ""
    config = yaml.safe_load(config_text) or {}
    records = read_records(run_dir / "metrics.jsonl")
    name = config.get("name") or run_dir.name
    sections = [_header(run_dir, config, records), *_plot_sections(config, records), _samples_section(run_dir),
                f'<details id="config"><summary>Resolved job (config.yaml)</summary>'
                f"<pre>{html.escape(config_text or 'not available')}</pre></details>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(str(name))}: diffrl run report</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_report(run_dir: Path) -> Path:
    """Build `run_dir/report.html` and replace the old one atomically (a reader never sees half a page)."""
    run_dir = Path(run_dir)
    page = render_report(run_dir)
    path = run_dir / "report.html"
    handle, tmp = tempfile.mkstemp(dir=run_dir, prefix=".report.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def cmd_report(args: argparse.Namespace) -> int:
    try:
        path = write_report(Path(args.run_dir))
    except ValueError as err:  # not a run directory, or a damaged metrics.jsonl (the message names the line)
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register `diffrl report RUN_DIR` on the CLI's subparsers."""
    report = subparsers.add_parser("report", help="rebuild RUN_DIR/report.html (a self-contained page of the run)")
    report.add_argument("run_dir", help="a run directory, e.g. runs/shapes_awm")
    report.set_defaults(func=cmd_report)
    return report
