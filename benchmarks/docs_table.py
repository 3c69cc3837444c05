"""Keeps docs/benchmarks.md as named sections that each benchmark script rewrites in place."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = "# Benchmarks\n\nMeasured by the scripts in `benchmarks/`; each rewrites its own section.\n"


def replace_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the `## title` section of `path` with `body`, keeping the other sections."""
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


def publish(path: Path, title: str, intro: str, rows: list[str]) -> None:
    """Write the section `title` as an introductory paragraph and a table, and print it."""
    body = "\n".join([intro, "", *rows])
    replace_section(path, title, body)
    print(body)
