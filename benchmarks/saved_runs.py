"""Per-run benchmark results saved as JSON, so that an interrupted benchmark resumes with the runs it lacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


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
