"""The dllm_decode prompts file: JSON lines {"prompt": str, "reference": str (optional)}, or plain text with one
prompt per line (the RL prompt-file reader, `kinds.rl.data.read_prompt_file`); each record gets its line order as
its id. Read when the job is validated (errors name the file and line) and again by the controller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffrl.kinds.rl.data import read_prompt_file


def read_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        raise ValueError(f"data.prompts: {path} not found")
    try:
        entries = read_prompt_file(str(path))
    except ValueError as err:
        raise ValueError(f"data.prompts: {err}") from None
    for number, entry in enumerate(entries, start=1):
        if entry.get("reference") is not None and not isinstance(entry["reference"], str):
            raise ValueError(f"data.prompts: {path}: prompt {number}: \"reference\" must be a string")
    entries = entries[:limit] if limit is not None else entries
    return [{"id": index, "prompt": entry["prompt"], "reference": entry.get("reference")}
            for index, entry in enumerate(entries)]
