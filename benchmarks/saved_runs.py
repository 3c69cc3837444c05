"""Per-run benchmark results saved as JSON, so that an interrupted benchmark resumes with the runs it lacks."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Callable, Sequence


def saved_or_run(path: Path, run: Callable[[], dict], fits: Callable[[dict], bool] = lambda _: True,
                 fresh: bool = False) -> dict:
    """The result saved at `path` when there is one that `fits` (same settings) and not `fresh`; otherwise `run()`'s,
    written atomically (a temporary file renamed over `path`) as soon as it returns."""
    if path.exists() and not fresh:
        result = json.loads(path.read_text())
        if fits(result):
            return result
    result = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def arm_seed_runs(arms: Sequence[str], indices: Sequence[int], seeds: Sequence[int], results: Path,
                  run_arm: Callable[[int, int, Path], dict], settings: list | Callable[[int], list],
                  fresh: bool = False) -> dict[str, list[dict]]:
    """{arm name: [result per seed]} for the chosen arm indices: each (arm, seed) from results/arm{i}_seed{s}.json
    when it was saved with the same `settings` (a list, or per arm index a function giving one), else
    `run_arm(index, seed, scratch_dir)` (saved as it ends)."""
    out: dict[str, list[dict]] = {}
    for index, name in enumerate(arms):
        if index not in indices:
            continue
        wanted = settings(index) if callable(settings) else settings
        for seed in seeds:
            def run(index: int = index, seed: int = seed, name: str = name, wanted: list = wanted) -> dict:
                print(f"== {name}, seed {seed}", flush=True)
                with tempfile.TemporaryDirectory() as tmp:
                    return {**run_arm(index, seed, Path(tmp)), "settings": wanted}

            out.setdefault(name, []).append(saved_or_run(results / f"arm{index}_seed{seed}.json", run,
                                                         lambda r, wanted=wanted: r.get("settings") == wanted,
                                                         fresh))
    return out


def arm_parser(doc: str, arms: int, steps: int, eval_every: int, seeds: list[int]) -> argparse.ArgumentParser:
    """The flags every arms x seeds benchmark takes: --steps, --eval-every, --seeds, --arms, --fresh."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--arms", type=int, nargs="+", default=list(range(arms)), help="arm indices to run")
    parser.add_argument("--fresh", action="store_true", help="rerun (arm, seed) pairs that have saved results")
    return parser


def band(ax, x, values, label: str) -> None:
    """The mean over seeds (rows of `values`) as a line, the band spanning the seeds."""
    import numpy as np

    values = np.asarray(values)
    line, = ax.plot(x, values.mean(0), marker="o", label=label)
    ax.fill_between(x, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
