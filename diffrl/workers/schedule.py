"""Schedule files: a sampler, its options and its time grid, as a `solver_tune` job chose them for one NFE budget.

A schedule file is JSON: {"format", "solver", "options", "grid", "nfe", "model", "scores"}. `rollout.schedule: PATH`
makes a rollout (and, when asked, the held-out eval) sample with exactly this solver on exactly this grid.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffrl.algorithms.solvers import build_solver, check_grid
from diffrl.utils.atomic import atomic_write_text

FORMAT = "diffrl.schedule/1"
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Schedule:
    """solver: a `solvers.SOLVERS` name; options: its keyword options; grid: sigmas from 1 to 0 (one model call per
    step, so nfe = len(grid) - 1); model: what it was tuned for; scores: what chose it (reward, distance, ...)."""

    solver: str
    options: dict[str, Any]
    grid: tuple[float, ...]
    model: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return len(self.grid) - 1

    def validate(self, where: str) -> Schedule:
        """This schedule, or a ValueError that starts with `where` (the file or key) and names the bad field."""
        try:
            build_solver(self.solver, **self.options)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        try:
            check_grid(self.grid)
        except ValueError as err:
            raise ValueError(f"{where}: grid: {err}") from None
        return self


def write_schedule(path: str | Path, schedule: Schedule) -> Path:
    """Write `schedule` atomically (a reader never sees half a file), creating its folder."""
    record = {"format": FORMAT, **asdict(schedule), "grid": list(schedule.grid), "nfe": schedule.nfe}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(Path(path), json.dumps(record, indent=2) + "\n")


def read_schedule(path: str | Path, where: str = "schedule") -> Schedule:
    """Read and check a schedule file; errors start with `where` (e.g. the config key) and name the file."""
    path = Path(path)
    label = f"{where}: {path}"
    if not path.is_file():
        raise ValueError(f"{label}: file not found")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{label}: larger than {MAX_BYTES} bytes; not a schedule file")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{label}: not JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{label}: not a schedule file (format must be {FORMAT!r})")
    missing = [key for key in ("solver", "options", "grid", "nfe") if key not in record]
    if missing:
        raise ValueError(f"{label}: missing {', '.join(missing)}")
    if not isinstance(record["options"], dict) or not isinstance(record["grid"], list):
        raise ValueError(f"{label}: options must be an object and grid a list of sigmas")
    schedule = Schedule(solver=str(record["solver"]), options=record["options"],
                        grid=tuple(float(s) for s in record["grid"]), model=str(record.get("model", "")),
                        scores={str(k): float(v) for k, v in record.get("scores", {}).items()})
    if record["nfe"] != schedule.nfe:
        raise ValueError(f"{label}: nfe={record['nfe']} but the grid has {schedule.nfe} steps")
    return schedule.validate(label)
