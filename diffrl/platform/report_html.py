"""runs/NAME/report.html: one self-contained page built from what a run directory holds.

Plots are drawn with matplotlib's Agg canvas and, like the sample grids, embedded as PNG data URIs, so the file can be
copied or attached on its own and opened without a network. It reads a run in progress (only the base eval, an empty
metrics file, no "after" grid yet) as well as a finished one: the training loop rewrites it after every eval and at
the end, and `diffrl report RUN_DIR` rebuilds it.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from diffrl.platform.checkpoint import MANIFEST, PREFIX, list_checkpoints
from diffrl.utils.atomic import atomic_write, atomic_write_text
from diffrl.platform.report_plots import (
    Records, data_uri, plot_reward, plot_small_multiples, plot_stage_times, plot_tasks, read_records, task_tags,
)

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
    return data_uri(data)


def _latest_checkpoint(run_dir: Path) -> int | None:
    """The newest complete checkpoints/step_XXXXXX: committed under its final name, with the manifest that
    diffrl/platform/checkpoint.py writes last (files are not re-hashed here: the report must stay fast)."""
    steps = [int(p.name.removeprefix(PREFIX)) for p in list_checkpoints(run_dir) if (p / MANIFEST).is_file()]
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
    if evals and config.get("kind", "rl") != "rl":  # no base model to compare with: the latest eval
        headline = f"{evals[-1][1]:.3f} (step {evals[-1][0]})"
    elif len(evals) > 1:
        headline = f"base {evals[0][1]:.3f} &rarr; {evals[-1][1]:.3f} (step {evals[-1][0]})"
    elif evals:
        headline = f"base {evals[0][1]:.3f} (no later eval yet)"
    else:
        headline = "not yet available"
    checkpoint = _latest_checkpoint(run_dir)
    rows = [("run", html.escape(str(name))), ("kind", html.escape(str(config.get("kind", "rl")))),
            ("algorithm", html.escape(str(learner.get("algorithm", "?"))))]
    if rollout.get("strategy"):
        rows.append(("rollout strategy", html.escape(str(rollout["strategy"]))))
    rows += [("status", "finished" if records.summary else "in progress"),
             ("last step", str(last_step)), (f"held-out {html.escape(eval_label)}", headline),
             ("latest checkpoint", f"step {checkpoint}" if checkpoint is not None else "none"),
             ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    quantization = _quantization_line(run_dir)
    if quantization:
        rows.insert(3, ("low precision", html.escape(quantization)))
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return (f'<header id="summary"><h1>{html.escape(str(name))}</h1>\n<table>\n{table}\n</table>\n'
            f"<p>Run directory: <code>{html.escape(str(run_dir))}</code></p></header>")


def _samples_section(run_dir: Path, kind: str) -> str:
    try:
        meta = json.loads((run_dir / "samples.json").read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    figures = []
    # RL runs show the base model's samples beside the trained one's; other kinds (pretraining) only the result.
    for which in ("before", "after") if kind == "rl" else ("after",):
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
    title = "Samples before and after RL" if kind == "rl" else "Samples"
    return _section("samples", title, "\n".join(figures))


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


def write_figure(run_dir: Path, name: str, fig: Any, title: str, caption: str) -> Path:
    """Save a kind's own matplotlib figure as run_dir/figures/NAME.png (atomically) with its title and caption; the
    report shows every such figure in a section of its own. Returns the PNG's path."""
    folder = Path(run_dir) / "figures"
    folder.mkdir(exist_ok=True)
    path = atomic_write(folder / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    atomic_write_text(folder / f"{name}.json", json.dumps({"title": title, "caption": caption}))
    return path


def _figure_sections(run_dir: Path) -> list[str]:
    sections = []
    for meta_path in sorted((run_dir / "figures").glob("*.json")):
        uri = _grid_uri(meta_path.with_suffix(".png"))
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if uri is not None:
            body = _img(uri, meta.get("caption", "")) + f"<p>{html.escape(meta.get('caption', ''))}</p>"
            sections.append(_section(f"figure-{meta_path.stem}", meta.get("title", meta_path.stem), body))
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
    # Training curves (placeholders until steps are logged) unless the run logs no step or eval but draws figures of
    # its own (a kind that does not train, such as solver_tune); then every figure; then the sample grids.
    figures = _figure_sections(run_dir)
    trains = records.steps or records.evals or not figures
    sections = [_header(run_dir, config, records), *(_plot_sections(config, records) if trains else []), *figures,
                _samples_section(run_dir, config.get("kind", "rl")),
                f'<details id="config"><summary>Resolved job (config.yaml)</summary>'
                f"<pre>{html.escape(config_text or 'not available')}</pre></details>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(str(name))}: diffrl run report</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_report(run_dir: Path) -> Path:
    """Build `run_dir/report.html` and replace the old one atomically (a reader never sees half a page)."""
    run_dir = Path(run_dir)
    return atomic_write_text(run_dir / "report.html", render_report(run_dir))


def refresh_report(run_dir: Path) -> None:
    """Rebuild report.html; a failure is reported but never stops the job (`diffrl report` rebuilds it)."""
    try:
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the report is a view of the run, not part of it
        print(f"diffrl: warning: report.html not updated: {type(err).__name__}: {err}", file=sys.stderr)


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
