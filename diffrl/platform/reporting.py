"""What a run writes for people: metrics.jsonl and sample grids with their prompts (plots: report_plots.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw


class MetricsLog:
    """Appends one JSON object per line; a line is written whole (flushed) so a crash never leaves half a record."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        lines = self.path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):  # only the last line may be cut short (a process killed mid-write)
                    raise ValueError(f"{self.path}:{number}: not a JSON record") from None
        return records


def sample_grid(
    images: np.ndarray, prompts: Sequence[str], per_row: int, path: Path, scale: int = 4, title: str = ""
) -> None:
    """Save rows of `per_row` images, one prompt per row with its caption on the left, upscaled `scale`x."""
    rows = math.ceil(len(images) / per_row)
    h, w = images.shape[1] * scale, images.shape[2] * scale
    label_w, pad, top = 260, 4, 24 if title else 4
    canvas = Image.new("RGB", (label_w + per_row * (w + pad), top + rows * (h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), title, fill=(0, 0, 0))
    for index, image in enumerate(images):
        row, col = divmod(index, per_row)
        tile = Image.fromarray(image).resize((w, h), Image.NEAREST)
        canvas.paste(tile, (label_w + col * (w + pad), top + row * (h + pad)))
        if col == 0:
            draw.text((4, top + row * (h + pad) + h // 2 - 6), prompts[index][:42], fill=(0, 0, 0))
    canvas.save(path)
