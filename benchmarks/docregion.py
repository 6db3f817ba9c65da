"""Benchmarks write their measured tables into marked regions of a doc, leaving the rest alone."""

from __future__ import annotations

from pathlib import Path


def write_region(path: Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` in `path` (adding them if missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else f"{title}\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
